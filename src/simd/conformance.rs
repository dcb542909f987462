//! Every real backend against the emulated one, lane by lane: each operation of [`F32Vec`],
//! [`U32Vec`] and [`F64Vec`] (and the element loads and stores built on them) runs on edge-case
//! and random inputs through each backend the CPU has and through `Emulated` of the same lane
//! count, the written-out meaning of every method, and the results must agree.
//!
//! Agreement is bitwise (NaN payloads included), except where the contract leaves the bits
//! open:
//! - a NaN produced by arithmetic (`add`, `sub`, `mul`, `div`, `sqrt`, `mul_add`,
//!   `round_even`, `widen`, and the `f64` operations): only that it is a NaN, since neither the
//!   trait nor Rust's float semantics fix the payload or sign of such a NaN;
//! - `mul_add` rounds once where the backend has FMA and twice (product, then sum) where it
//!   has not (the portable backend on a target without FMA): the emulated reference is chosen
//!   accordingly, so the test also checks which of the two a backend does;
//! - `write_i8` is specified only for lanes that are integers in `[-127, 127]`, so only such
//!   lanes are given to it;
//! - `prefetch` has no result: it only has to run, on any address.
//!
//! Each backend's comparison is compiled inside a `#[target_feature]` function with the
//! features `dispatch` gives its kernels (everything here is `#[inline(always)]`), so its code
//! is the kernels' code. Backends the CPU lacks are skipped, and the test prints which ran.

use super::element::{ElementIo, bf16, f16};
use super::emulated::Emulated;
use super::{F32Vec, F64Vec, Isa, Kernel, MAX_LANES, SupportedIsa, U32Vec};

/// Random trials per backend, after the pairs of edge cases.
const TRIALS: usize = 600;

/// What the buffers around a store hold before it: bits no operation here produces from the
/// inputs at those positions.
const SENTINEL_F32: u32 = 0x7FA5_5A5A;
const SENTINEL_U16: u16 = 0x5AA5;
const SENTINEL_I8: i8 = 0x5A;

/// splitmix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn word(&mut self) -> u32 {
        match self.below(4) {
            0 => EDGE_WORDS[self.below(EDGE_WORDS.len())],
            _ => self.next() as u32,
        }
    }

    fn half(&mut self) -> u16 {
        match self.below(4) {
            0 => EDGE_HALVES[self.below(EDGE_HALVES.len())],
            _ => self.next() as u16,
        }
    }

    /// Edge cases, rounding ties of bf16 and f16, integers and halves, random bit patterns and
    /// ordinary numbers.
    fn f32(&mut self, edges: &[f32]) -> f32 {
        let sign = (self.next() as u32) & 0x8000_0000;
        match self.below(8) {
            0 | 1 => edges[self.below(edges.len())],
            2 => f32::from_bits(self.next() as u32),
            // Exactly halfway between two bf16 values.
            3 => f32::from_bits((self.next() as u32 & 0xFFFF_0000) | 0x8000),
            // Exactly halfway between two normal f16 values (f32 exponents 113..=142), or two
            // subnormal ones.
            4 if self.below(4) == 0 => {
                let k = self.below(1024) as f32;
                f32::from_bits(((k + 0.5) * 2f32.powi(-24)).to_bits() | sign)
            }
            4 => {
                let exp = 113 + self.below(30) as u32;
                let man = (self.next() as u32 & 0x007F_E000) | 0x1000;
                f32::from_bits(sign | (exp << 23) | man)
            }
            5 => (self.below(1024) as f32 - 512.0) * 0.5,
            _ => {
                let exp = 90 + self.below(75) as u32;
                f32::from_bits(sign | (exp << 23) | (self.next() as u32 & 0x007F_FFFF))
            }
        }
    }

    fn f64(&mut self, edges: &[f32]) -> f64 {
        match self.below(4) {
            0 => EDGE_F64[self.below(EDGE_F64.len())],
            1 => f64::from_bits(self.next()),
            _ => f64::from(self.f32(edges)) * f64::from(self.f32(edges)),
        }
    }
}

/// f32 bit patterns: zeros, infinities, quiet and signalling NaNs with payloads and either
/// sign, subnormals, the extremes, and values at rounding ties of bf16.
const EDGE_BITS: &[u32] = &[
    0x0000_0000,
    0x8000_0000,
    0x7F80_0000,
    0xFF80_0000,
    0x7FC0_0000,
    0xFFC0_0000,
    0x7FC1_2345,
    0xFFE0_0001,
    0x7F80_0001,
    0xFFA0_0000,
    0x7FBF_FFFF,
    0x7F80_2001,
    0x0000_0001,
    0x8000_0001,
    0x007F_FFFF,
    0x807F_FFFF,
    0x0040_0000,
    0x0000_8000,
    0x0080_0000,
    0x8080_0000,
    0x7F7F_FFFF,
    0xFF7F_FFFF,
    0x3F80_8000,
    0x3F81_8000,
    0xBF80_8000,
    0x7F7F_8000,
    0x7F7F_7FFF,
    0x3F80_7FFF,
    0x3F80_8001,
];

/// f32 values: f16 extremes and ties (normal and subnormal), integers and halves for the
/// rounding to integers, and the largest values the i8 output takes.
const EDGE_VALUES: &[f32] = &[
    1.0,
    -1.0,
    0.5,
    -0.5,
    1.5,
    2.5,
    -2.5,
    0.499_999_97,
    65504.0,
    65519.99,
    65520.0,
    65536.0,
    -65520.0,
    6.103_515_6e-5,
    6.097_555e-5,
    5.960_464_5e-8,
    2.980_232_2e-8,
    2.980_232_6e-8,
    -2.980_232_2e-8,
    8.940_697e-8,
    1.0 + 1.0 / 2048.0,
    1.0 + 3.0 / 2048.0,
    1.0 + 1.0 / 256.0,
    1.0 + 3.0 / 256.0,
    8_388_607.5,
    8_388_608.0,
    16_777_216.0,
    126.5,
    127.0,
    -127.0,
    1e-40,
    3.389_531_4e38,
];

const EDGE_WORDS: &[u32] = &[
    0,
    1,
    2,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0x8000_0001,
    0xFFFF_FFFF,
    0xFFFF_FFFE,
    // i32 values whose f32 conversion rounds (ties included).
    16_777_217,
    16_777_219,
    (-16_777_217i32) as u32,
    0x7FFF_FFC0,
    0x7FFF_FF80,
];

const EDGE_HALVES: &[u16] = &[
    0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0x7C00, 0xFC00, 0x7C01, 0x7E00,
    0xFE00, 0x7DFF, 0x7F80, 0xFF80, 0x7F81, 0x7FC0, 0xFFFF, 0x0080, 0x007F,
];

const EDGE_F64: &[f64] = &[
    0.0,
    -0.0,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN,
    f64::MAX,
    f64::MIN_POSITIVE,
    5e-324,
    -5e-324,
    1.0,
    -1.5,
    1e300,
];

fn edge_values() -> Vec<f32> {
    EDGE_BITS
        .iter()
        .map(|&b| f32::from_bits(b))
        .chain(EDGE_VALUES.iter().copied())
        .collect()
}

/// How results are compared.
#[derive(Clone, Copy, PartialEq)]
enum Nan {
    /// Bit for bit.
    Exact,
    /// Bit for bit, or both NaN.
    Any,
}

/// The lanes of `v`, as bits (lanes past `LANES` are 0).
#[inline(always)]
fn f32s<W: F32Vec>(v: W) -> [u32; MAX_LANES] {
    let mut out = [0f32; MAX_LANES];
    v.store(&mut out[..W::LANES]);
    out.map(f32::to_bits)
}

#[inline(always)]
fn u32s<U: U32Vec>(u: U) -> [u32; MAX_LANES] {
    let mut out = [0u32; MAX_LANES];
    u.store(&mut out[..U::LANES]);
    out
}

#[inline(always)]
fn f64s<D: F64Vec>(d: D) -> [u64; MAX_LANES] {
    let mut out = [0f64; MAX_LANES];
    d.store(&mut out[..D::LANES]);
    out.map(f64::to_bits)
}

#[inline(always)]
fn u16s<W: F32Vec>(h: W::H) -> [u16; MAX_LANES] {
    let mut out = [0u16; MAX_LANES];
    W::store_h(h, &mut out[..W::LANES]);
    out
}

/// Panics unless `got` (the backend's) and `want` (the emulated backend's) agree in every
/// lane: bit for bit, or as `nan` allows. `inputs` are the operands' bits, for the message.
#[track_caller]
fn agree<T>(isa: Isa, op: &str, nan: Nan, got: &[T], want: &[T], inputs: &[&[u32]])
where
    T: Copy + PartialEq + std::fmt::LowerHex + IsNan,
{
    assert_eq!(got.len(), want.len());
    for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g == w || (nan == Nan::Any && g.is_nan() && w.is_nan()) {
            continue;
        }
        let operands: Vec<String> = inputs
            .iter()
            .map(|x| format!("{:#010x}", x.get(j).copied().unwrap_or(0)))
            .collect();
        panic!(
            "{isa:?} {op}: lane {j} of {}: backend {g:#x}, emulated {w:#x} (operands {operands:?})",
            want.len()
        );
    }
}

/// Whether bits are a NaN of their float type (`u32`: f32, `u64`: f64; others never).
trait IsNan {
    fn is_nan(&self) -> bool;
}

impl IsNan for u32 {
    fn is_nan(&self) -> bool {
        f32::from_bits(*self).is_nan()
    }
}

impl IsNan for u64 {
    fn is_nan(&self) -> bool {
        f64::from_bits(*self).is_nan()
    }
}

impl IsNan for u16 {
    fn is_nan(&self) -> bool {
        false
    }
}

impl IsNan for u8 {
    fn is_nan(&self) -> bool {
        false
    }
}

/// An element type's bits, for comparing stores.
trait Bits: ElementIo {
    const NAME: &'static str;
    fn bits(self) -> u32;
    fn sentinel() -> Self;
}

impl Bits for f32 {
    const NAME: &'static str = "f32";
    fn bits(self) -> u32 {
        self.to_bits()
    }
    fn sentinel() -> Self {
        f32::from_bits(SENTINEL_F32)
    }
}

impl Bits for bf16 {
    const NAME: &'static str = "bf16";
    fn bits(self) -> u32 {
        u32::from(self.to_bits())
    }
    fn sentinel() -> Self {
        bf16::from_bits(SENTINEL_U16)
    }
}

impl Bits for f16 {
    const NAME: &'static str = "f16";
    fn bits(self) -> u32 {
        u32::from(self.to_bits())
    }
    fn sentinel() -> Self {
        f16::from_bits(SENTINEL_U16)
    }
}

/// Storage aligned for every streaming store.
#[repr(C, align(64))]
struct Aligned<T>([T; 2 * MAX_LANES]);

/// Whether the backend of `isa` rounds `mul_add` once. AVX2 and AVX-512 have FMA; the portable
/// backend (`wide`) fuses only where the build target has FMA (NEON always does) and multiplies,
/// then adds, elsewhere.
fn fused(isa: Isa) -> bool {
    match isa {
        Isa::Avx2 | Isa::Avx512 => true,
        Isa::Portable | Isa::Neon => cfg!(any(target_feature = "fma", target_arch = "aarch64")),
    }
}

/// Arithmetic, comparisons and conversions of `f32` lanes `a`, `b`, `c`.
#[inline(always)]
fn arithmetic<V: F32Vec, const N: usize>(isa: Isa, a: &[f32; N], b: &[f32; N], c: &[f32; N]) {
    type E<const N: usize> = Emulated<N>;
    let (va, vb, vc) = (V::load(a), V::load(b), V::load(c));
    let (ea, eb, ec) = (E::<N>::load(a), E::<N>::load(b), E::<N>::load(c));
    let (ba, bb, bc) = (
        a.map(f32::to_bits),
        b.map(f32::to_bits),
        c.map(f32::to_bits),
    );
    let one = [&ba[..]];
    let two = [&ba[..], &bb[..]];
    let three = [&ba[..], &bb[..], &bc[..]];
    macro_rules! same {
        ($op:literal, $nan:expr, $got:expr, $want:expr, $inputs:expr) => {
            agree(isa, $op, $nan, &f32s($got)[..N], &f32s($want)[..N], $inputs)
        };
    }
    same!("add", Nan::Any, va.add(vb), ea.add(eb), &two);
    same!("sub", Nan::Any, va.sub(vb), ea.sub(eb), &two);
    same!("mul", Nan::Any, va.mul(vb), ea.mul(eb), &two);
    same!("div", Nan::Any, va.div(vb), ea.div(eb), &two);
    same!("sqrt", Nan::Any, va.sqrt(), ea.sqrt(), &one);
    let want_fma = if fused(isa) {
        ea.mul_add(eb, ec)
    } else {
        ea.mul(eb).add(ec)
    };
    same!("mul_add", Nan::Any, va.mul_add(vb, vc), want_fma, &three);
    same!("relu", Nan::Exact, va.relu(), ea.relu(), &one);
    same!(
        "round_even",
        Nan::Any,
        va.round_even(),
        ea.round_even(),
        &one
    );
    let bits = ba[0] ^ bb[N - 1].rotate_left(7);
    same!(
        "select_bits",
        Nan::Exact,
        V::select_bits(bits, va, vb),
        E::<N>::select_bits(bits, ea, eb),
        &two
    );
    same!(
        "from_bits(to_bits)",
        Nan::Exact,
        V::from_bits(va.to_bits()),
        E::<N>::from_bits(ea.to_bits()),
        &one
    );
    agree(
        isa,
        "to_bits",
        Nan::Exact,
        &u32s(va.to_bits())[..N],
        &ba[..],
        &one,
    );
    agree(
        isa,
        "to_bf16",
        Nan::Exact,
        &u16s::<V>(va.to_bf16())[..N],
        &u16s::<E<N>>(ea.to_bf16())[..N],
        &one,
    );
    agree(
        isa,
        "to_f16",
        Nan::Exact,
        &u16s::<V>(va.to_f16())[..N],
        &u16s::<E<N>>(ea.to_f16())[..N],
        &one,
    );
    let ((vlo, vhi), (elo, ehi)) = (va.widen(), ea.widen());
    let got: Vec<u64> = [f64s(vlo), f64s(vhi)]
        .iter()
        .flat_map(|h| h[..N / 2].to_vec())
        .collect();
    let want: Vec<u64> = [f64s(elo), f64s(ehi)]
        .iter()
        .flat_map(|h| h[..N / 2].to_vec())
        .collect();
    agree(isa, "widen", Nan::Any, &got, &want, &one);
}

/// The `f64` lanes of the backend: `x`, `y`, `z` hold `N / 2` values each.
#[inline(always)]
fn doubles<V: F32Vec, const N: usize>(isa: Isa, x: &[f64], y: &[f64], z: &[f64]) {
    type D<const N: usize> = <Emulated<N> as F32Vec>::D;
    let h = N / 2;
    let (vx, vy, vz) = (V::D::load(x), V::D::load(y), V::D::load(z));
    let (ex, ey, ez) = (D::<N>::load(x), D::<N>::load(y), D::<N>::load(z));
    let inputs: Vec<Vec<u32>> = [x, y, z]
        .iter()
        .map(|v| v.iter().map(|d| (d.to_bits() >> 32) as u32).collect())
        .collect();
    let inputs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    macro_rules! same {
        ($op:literal, $nan:expr, $got:expr, $want:expr) => {
            agree(isa, $op, $nan, &f64s($got)[..h], &f64s($want)[..h], &inputs)
        };
    }
    same!("f64 load/store", Nan::Exact, vx, ex);
    same!(
        "f64 splat",
        Nan::Exact,
        V::D::splat(y[0]),
        D::<N>::splat(y[0])
    );
    same!("f64 add", Nan::Any, vx.add(vy), ex.add(ey));
    same!("f64 mul", Nan::Any, vx.mul(vy), ex.mul(ey));
    let want = if fused(isa) {
        ex.mul_add(ey, ez)
    } else {
        ex.mul(ey).add(ez)
    };
    same!("f64 mul_add", Nan::Any, vx.mul_add(vy, vz), want);
}

/// The `u32` lanes, and the conversions between words, halves and floats.
#[inline(always)]
fn words<V: F32Vec, const N: usize>(
    isa: Isa,
    p: &[u32; N],
    q: &[u32; N],
    r: &[u32; N],
    rng: &mut Rng,
) {
    type U<const N: usize> = <Emulated<N> as F32Vec>::U;
    let (vp, vq, vr) = (V::U::load(p), V::U::load(q), V::U::load(r));
    let (ep, eq, er) = (U::<N>::load(p), U::<N>::load(q), U::<N>::load(r));
    let two = [&p[..], &q[..]];
    macro_rules! same {
        ($op:expr, $got:expr, $want:expr) => {
            agree(
                isa,
                $op,
                Nan::Exact,
                &u32s($got)[..N],
                &u32s($want)[..N],
                &two,
            )
        };
    }
    same!("u32 load/store", vp, ep);
    same!("u32 splat", V::U::splat(q[0]), U::<N>::splat(q[0]));
    same!("lane_index", V::U::lane_index(), U::<N>::lane_index());
    same!("u32 add", vp.add(vq), ep.add(eq));
    same!("u32 sub", vp.sub(vq), ep.sub(eq));
    same!("and", vp.and(vq), ep.and(eq));
    same!("xor", vp.xor(vq), ep.xor(eq));
    same!("xor3", vp.xor3(vq, vr), ep.xor3(eq, er));
    same!("max", vp.max(vq), ep.max(eq));
    for n in [0, 1, 13, 16, 31, rng.below(32) as u32] {
        same!(&format!("shl {n}"), vp.shl(n), ep.shl(n));
        same!(&format!("shr {n}"), vp.shr(n), ep.shr(n));
    }
    for m in [0, 1, u32::MAX, 0xD251_1F53, q[0]] {
        same!(&format!("mul_even {m:#x}"), vp.mul_even(m), ep.mul_even(m));
    }
    same!("odd_to_even", vp.odd_to_even(), ep.odd_to_even());
    same!("even_pairs", vp.even_pairs(vq), ep.even_pairs(eq));
    let ((v0, v1), (e0, e1)) = (vp.zip(vq), ep.zip(eq));
    same!("zip (first)", v0, e0);
    same!("zip (second)", v1, e1);
    for start in 0..N {
        same!(
            &format!("lanes_from {start}"),
            vp.lanes_from(vq, start),
            ep.lanes_from(eq, start)
        );
    }
    // Equal lanes too, where `>=` differs from `>`.
    let mixed: [u32; N] = std::array::from_fn(|j| if r[j] & 1 == 0 { p[j] } else { q[j] });
    for rhs in [q, &mixed] {
        let (got, want) = (vp.ge_bits(V::U::load(rhs)), ep.ge_bits(U::<N>::load(rhs)));
        assert_eq!(got, want, "{isa:?} ge_bits of {p:#x?} and {rhs:#x?}");
    }
    agree(
        isa,
        "from_i32",
        Nan::Exact,
        &f32s(V::from_i32(vp))[..N],
        &f32s(Emulated::<N>::from_i32(ep))[..N],
        &two,
    );
    agree(
        isa,
        "words_to_h",
        Nan::Exact,
        &u16s::<V>(V::words_to_h(vp))[..N],
        &u16s::<Emulated<N>>(Emulated::<N>::words_to_h(ep))[..N],
        &two,
    );
}

/// Loads and stores of 16-bit lanes and their conversions, with every tail length.
#[inline(always)]
fn halves<V: F32Vec, const N: usize>(isa: Isa, h: &[u16; N]) {
    type E<const N: usize> = Emulated<N>;
    let inputs: [u32; N] = h.map(u32::from);
    let one = [&inputs[..]];
    let (vh, eh) = (V::load_h(h), E::<N>::load_h(h));
    agree(
        isa,
        "load_h/store_h",
        Nan::Exact,
        &u16s::<V>(vh)[..N],
        &h[..],
        &one,
    );
    agree(
        isa,
        "h_to_words",
        Nan::Exact,
        &u32s(V::h_to_words(vh))[..N],
        &u32s(E::<N>::h_to_words(eh))[..N],
        &one,
    );
    agree(
        isa,
        "from_bf16",
        Nan::Exact,
        &f32s(V::from_bf16(vh))[..N],
        &f32s(E::<N>::from_bf16(eh))[..N],
        &one,
    );
    agree(
        isa,
        "from_f16",
        Nan::Exact,
        &f32s(V::from_f16(vh))[..N],
        &f32s(E::<N>::from_f16(eh))[..N],
        &one,
    );
    for n in 0..N {
        agree(
            isa,
            &format!("load_h_partial of {n}"),
            Nan::Exact,
            &u16s::<V>(V::load_h_partial(&h[..n]))[..N],
            &u16s::<E<N>>(E::<N>::load_h_partial(&h[..n]))[..N],
            &one,
        );
        let mut got = [SENTINEL_U16; MAX_LANES + 4];
        let mut want = got;
        V::store_h_partial(vh, &mut got[..n]);
        E::<N>::store_h_partial(eh, &mut want[..n]);
        agree(
            isa,
            &format!("store_h_partial of {n}"),
            Nan::Exact,
            &got,
            &want,
            &one,
        );
    }
    let mut got = Aligned([SENTINEL_U16; 2 * MAX_LANES]);
    let mut want = [SENTINEL_U16; 2 * MAX_LANES];
    V::store_h_stream(vh, &mut got.0[..N]);
    V::fence_streams();
    E::<N>::store_h(eh, &mut want[..N]);
    agree(isa, "store_h_stream", Nan::Exact, &got.0, &want, &one);
}

/// `f32` loads and stores, with every tail length, and the integer output.
#[inline(always)]
fn memory<V: F32Vec, const N: usize>(isa: Isa, a: &[f32; N], fill: f32, ints: &[f32; N]) {
    type E<const N: usize> = Emulated<N>;
    let ba = a.map(f32::to_bits);
    let one = [&ba[..]];
    let (va, ea) = (V::load(a), E::<N>::load(a));
    agree(isa, "load/store", Nan::Exact, &f32s(va)[..N], &ba[..], &one);
    agree(
        isa,
        "splat",
        Nan::Exact,
        &f32s(V::splat(a[1 % N]))[..N],
        &f32s(E::<N>::splat(a[1 % N]))[..N],
        &one,
    );
    for n in 0..N {
        agree(
            isa,
            &format!("load_partial of {n}"),
            Nan::Exact,
            &f32s(V::load_partial(&a[..n], fill))[..N],
            &f32s(E::<N>::load_partial(&a[..n], fill))[..N],
            &one,
        );
        let mut got = [SENTINEL_F32; MAX_LANES + 4].map(f32::from_bits);
        let mut want = got;
        va.store_partial(&mut got[..n]);
        ea.store_partial(&mut want[..n]);
        agree(
            isa,
            &format!("store_partial of {n}"),
            Nan::Exact,
            &got.map(f32::to_bits),
            &want.map(f32::to_bits),
            &one,
        );
    }
    let mut got = Aligned([f32::from_bits(SENTINEL_F32); 2 * MAX_LANES]);
    let mut want = [f32::from_bits(SENTINEL_F32); 2 * MAX_LANES];
    va.store_stream(&mut got.0[..N]);
    V::fence_streams();
    ea.store(&mut want[..N]);
    agree(
        isa,
        "store_stream",
        Nan::Exact,
        &got.0.map(f32::to_bits),
        &want.map(f32::to_bits),
        &one,
    );
    // The i8 output, from integer lanes in [-127, 127] (its whole domain), every length.
    let bi = ints.map(f32::to_bits);
    let (vi, ei) = (V::load(ints), E::<N>::load(ints));
    for n in 0..=N {
        let mut got = [SENTINEL_I8; MAX_LANES + 4];
        let mut want = got;
        vi.write_i8(&mut got[..n]);
        ei.write_i8(&mut want[..n]);
        agree(
            isa,
            &format!("write_i8 of {n}"),
            Nan::Exact,
            &got.map(|b| b as u8),
            &want.map(|b| b as u8),
            &[&bi[..]],
        );
    }
    // No result; it must only run, whatever the address.
    V::prefetch(a.as_ptr());
    V::prefetch(std::ptr::null::<f32>());
    V::prefetch(usize::MAX as *const u8);
}

/// Reads and writes of element type `T` through the generic element paths, with every tail
/// length: `src` is read, `values` written.
#[inline(always)]
fn elements<V: F32Vec, T: Bits, const N: usize>(
    isa: Isa,
    src: &[T; N],
    values: &[f32; N],
    fill: f32,
) {
    type E<const N: usize> = Emulated<N>;
    let read_bits = src.map(T::bits);
    let written_bits = values.map(f32::to_bits);
    let (reads, writes) = ([&read_bits[..]], [&written_bits[..]]);
    let (vv, ev) = (V::load(values), E::<N>::load(values));
    let name = T::NAME;
    let stores = |got: &[T], want: &[T], op: &str| {
        let got: Vec<u32> = got.iter().map(|&t| t.bits()).collect();
        let want: Vec<u32> = want.iter().map(|&t| t.bits()).collect();
        agree(isa, op, Nan::Exact, &got, &want, &writes);
    };
    agree(
        isa,
        &format!("read::<{name}>"),
        Nan::Exact,
        &f32s(V::read(&src[..]))[..N],
        &f32s(E::<N>::read(&src[..]))[..N],
        &reads,
    );
    let mut got = [T::sentinel(); MAX_LANES + 4];
    let mut want = got;
    vv.write(&mut got[..N]);
    ev.write(&mut want[..N]);
    stores(&got, &want, &format!("write::<{name}>"));
    for n in 0..=N {
        agree(
            isa,
            &format!("read_lanes::<{name}> of {n}"),
            Nan::Exact,
            &f32s(V::read_lanes(&src[..n], fill))[..N],
            &f32s(E::<N>::read_lanes(&src[..n], fill))[..N],
            &reads,
        );
        let mut got = [T::sentinel(); MAX_LANES + 4];
        let mut want = got;
        vv.write_lanes(&mut got[..n]);
        ev.write_lanes(&mut want[..n]);
        stores(&got, &want, &format!("write_lanes::<{name}> of {n}"));
        let mut got = [T::sentinel(); MAX_LANES + 4];
        let mut want = got;
        let rv = T::store_round::<V, false>(vv, &mut got[..n]);
        let re = T::store_round::<E<N>, false>(ev, &mut want[..n]);
        stores(&got, &want, &format!("store_round::<{name}> of {n}"));
        agree(
            isa,
            &format!("store_round::<{name}> of {n}: result"),
            Nan::Exact,
            &f32s(rv)[..N],
            &f32s(re)[..N],
            &writes,
        );
        if n < N {
            agree(
                isa,
                &format!("read_partial::<{name}> of {n}"),
                Nan::Exact,
                &f32s(V::read_partial(&src[..n], fill))[..N],
                &f32s(E::<N>::read_partial(&src[..n], fill))[..N],
                &reads,
            );
            let mut got = [T::sentinel(); MAX_LANES + 4];
            let mut want = got;
            vv.write_partial(&mut got[..n]);
            ev.write_partial(&mut want[..n]);
            stores(&got, &want, &format!("write_partial::<{name}> of {n}"));
        }
    }
    let mut got = Aligned([T::sentinel(); 2 * MAX_LANES]);
    let mut want = [T::sentinel(); 2 * MAX_LANES];
    vv.write_stream(&mut got.0[..N]);
    V::fence_streams();
    ev.write(&mut want[..N]);
    stores(&got.0, &want, &format!("write_stream::<{name}>"));
    let mut got = Aligned([T::sentinel(); 2 * MAX_LANES]);
    let rv = T::store_round::<V, true>(vv, &mut got.0[..N]);
    V::fence_streams();
    stores(&got.0, &want, &format!("store_round::<{name}> streaming"));
    agree(
        isa,
        &format!("store_round::<{name}> streaming: result"),
        Nan::Exact,
        &f32s(rv)[..N],
        &f32s(E::<N>::read(&want[..N]))[..N],
        &writes,
    );
}

/// A kernel run apart must see the vector type it was run with.
struct Apart;

impl Kernel for Apart {
    type Output = (usize, u32);
    #[inline(always)]
    fn run<W: F32Vec>(self) -> (usize, u32) {
        (
            W::LANES,
            f32s(W::splat(2.0).mul(W::splat(3.0)))[W::LANES - 1],
        )
    }
}

/// Backend `V` against `Emulated<N>`.
#[inline(always)]
fn against<V: F32Vec, const N: usize>(isa: Isa, seed: u64) {
    type E<const N: usize> = Emulated<N>;
    assert_eq!(V::LANES, N);
    assert_eq!(<V::U as U32Vec>::LANES, N, "{isa:?}: u32 lanes");
    assert_eq!(<V::D as F64Vec>::LANES, N / 2, "{isa:?}: f64 lanes");
    assert_eq!(
        <V::U as U32Vec>::REGISTERS,
        <<E<N> as F32Vec>::U as U32Vec>::REGISTERS,
        "{isa:?}: registers"
    );
    assert_eq!(
        V::run_apart(Apart),
        E::<N>::run_apart(Apart),
        "{isa:?}: run_apart"
    );
    let edges = edge_values();
    // Every pair of edge cases (and a third operand cycling through them).
    let count = edges.len() * edges.len();
    for start in (0..count).step_by(N) {
        let k = |j: usize| (start + j) % count;
        let a: [f32; N] = std::array::from_fn(|j| edges[k(j) / edges.len()]);
        let b: [f32; N] = std::array::from_fn(|j| edges[k(j) % edges.len()]);
        let c: [f32; N] = std::array::from_fn(|j| edges[(k(j) * 7 + 3) % edges.len()]);
        arithmetic::<V, N>(isa, &a, &b, &c);
    }
    for (i, h) in EDGE_HALVES.chunks(N).enumerate() {
        let h: [u16; N] = std::array::from_fn(|j| h.get(j).copied().unwrap_or(i as u16));
        halves::<V, N>(isa, &h);
    }
    let mut rng = Rng(seed);
    for _ in 0..TRIALS {
        let [a, b, c]: [[f32; N]; 3] =
            std::array::from_fn(|_| std::array::from_fn(|_| rng.f32(&edges)));
        arithmetic::<V, N>(isa, &a, &b, &c);
        let [x, y, z]: [[f64; MAX_LANES]; 3] =
            std::array::from_fn(|_| std::array::from_fn(|_| rng.f64(&edges)));
        doubles::<V, N>(isa, &x, &y, &z);
        let [p, q, r]: [[u32; N]; 3] = std::array::from_fn(|_| std::array::from_fn(|_| rng.word()));
        words::<V, N>(isa, &p, &q, &r, &mut rng);
        let h: [u16; N] = std::array::from_fn(|_| rng.half());
        halves::<V, N>(isa, &h);
        let fill = rng.f32(&edges);
        let ints: [f32; N] = std::array::from_fn(|_| match rng.below(16) {
            0 => -0.0,
            1 => 127.0,
            2 => -127.0,
            _ => rng.below(255) as f32 - 127.0,
        });
        memory::<V, N>(isa, &a, fill, &ints);
        elements::<V, f32, N>(isa, &b, &a, fill);
        elements::<V, bf16, N>(isa, &h.map(bf16::from_bits), &a, fill);
        elements::<V, f16, N>(isa, &h.map(f16::from_bits), &a, fill);
    }
}

/// Runs [`against`] for the backend of `isa`, if the CPU has it; whether it ran.
fn check(isa: Isa, seed: u64) -> bool {
    if SupportedIsa::new(isa).is_none() {
        return false;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SupportedIsa::new checked that the CPU has AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { avx2(seed) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SupportedIsa::new checked that the CPU has AVX-512 F/BW/DQ/VL (and AVX2).
        Isa::Avx512 => unsafe { avx512(seed) },
        // What `dispatch` runs for every other ISA.
        _ => against::<super::portable::Vector, 8>(isa, seed),
    }
    true
}

/// [`against`] for the AVX2 backend, compiled as `dispatch` compiles its kernels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2(seed: u64) {
    against::<super::x86_avx2::Vector, 8>(Isa::Avx2, seed)
}

/// [`against`] for the AVX-512 backend, compiled as `dispatch` compiles its kernels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
unsafe fn avx512(seed: u64) {
    against::<super::x86_avx512::Vector, 16>(Isa::Avx512, seed)
}

#[test]
fn every_backend_matches_the_emulated_one_lane_by_lane() {
    let (mut ran, mut skipped) = (Vec::new(), Vec::new());
    for (i, isa) in Isa::ALL.into_iter().enumerate() {
        if check(isa, 0x5EED_0000 + i as u64) {
            ran.push(isa);
        } else {
            skipped.push(isa);
        }
    }
    println!("checked against the emulated backend: {ran:?}; not on this CPU: {skipped:?}");
    assert!(ran.contains(&Isa::Portable));
}
