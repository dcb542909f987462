//! bf16 and f16 as the half-precision tests see them: the `half` crate's own conversions (not the
//! library's vector conversions, so that the reference stays independent of the code under
//! test), the constants the tests need of each type, and the check that a twin's output is the
//! f32 function's output rounded once to the type.

use normkit::{Element, bf16, f16};
use std::fmt::Debug;

/// A 16-bit data type, with the tests' own conversions.
pub trait Half: Element + Copy + Debug {
    const NAME: &'static str;
    /// A finite value near the top of the type's range.
    const BIG: f32;
    /// The largest finite value.
    const MAX: f32;
    /// The smallest positive subnormal.
    const MIN_SUBNORMAL: f32;
    /// The largest subnormal's bit pattern.
    const MAX_SUBNORMAL: u16;
    /// The quiet bit of a NaN.
    const QUIET: u16;
    /// Rounds to nearest, ties to even.
    fn round(v: f32) -> Self;
    /// Widens exactly.
    fn wide(self) -> f32;
    fn bits(self) -> u16;
    fn from_bits(bits: u16) -> Self;
}

/// The conversions of `Half` through the `half` crate's functions of the type.
macro_rules! conversions {
    ($t:ty) => {
        fn round(v: f32) -> Self {
            <$t>::from_f32(v)
        }
        fn wide(self) -> f32 {
            <$t>::to_f32(self)
        }
        fn bits(self) -> u16 {
            <$t>::to_bits(self)
        }
        fn from_bits(bits: u16) -> Self {
            <$t>::from_bits(bits)
        }
    };
}

impl Half for bf16 {
    const NAME: &'static str = "bf16";
    const BIG: f32 = 3.3e38;
    const MAX: f32 = 3.389_531_4e38;
    const MIN_SUBNORMAL: f32 = 9.18355e-41;
    const MAX_SUBNORMAL: u16 = 0x007F;
    const QUIET: u16 = 0x0040;
    conversions!(bf16);
}

impl Half for f16 {
    const NAME: &'static str = "f16";
    const BIG: f32 = 65504.0;
    const MAX: f32 = 65504.0;
    const MIN_SUBNORMAL: f32 = 5.960_464_5e-8;
    const MAX_SUBNORMAL: u16 = 0x03FF;
    const QUIET: u16 = 0x0200;
    conversions!(f16);
}

/// Each value widened exactly.
pub fn widen<H: Half>(v: &[H]) -> Vec<f32> {
    v.iter().map(|h| h.wide()).collect()
}

/// Each value rounded to `H`.
pub fn narrow<H: Half>(v: &[f32]) -> Vec<H> {
    v.iter().map(|&x| H::round(x)).collect()
}

/// Each value's bit pattern.
pub fn bits<H: Half>(v: &[H]) -> Vec<u16> {
    v.iter().map(|h| h.bits()).collect()
}

/// What a NaN of the f32 result may become in the 16-bit type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nan {
    /// Exactly `Half::round` of it, like every other value.
    Exact,
    /// Any quiet NaN of the type: its payload is not specified.
    Quiet,
    /// Any NaN: which NaN an operation on NaNs gives is not fixed (x86 returns the first
    /// operand's, and the compiler may order operands differently in the f32 and the 16-bit
    /// instance of a kernel).
    Any,
}

/// Whether `got` is `want` rounded once to `H`, a NaN as `nan` allows.
pub fn is_rounded<H: Half>(got: H, want: f32, nan: Nan) -> bool {
    let exact = got.bits() == H::round(want).bits();
    if !want.is_nan() {
        return exact;
    }
    match nan {
        Nan::Exact => exact,
        Nan::Quiet => got.wide().is_nan() && got.bits() & H::QUIET != 0,
        Nan::Any => got.wide().is_nan(),
    }
}

/// `got` is `want` rounded once to `H` (nearest, ties to even), bit for bit, element by element;
/// a NaN as `nan` allows.
#[track_caller]
pub fn assert_rounded<H: Half>(got: &[H], want: &[f32], nan: Nan, what: &str) {
    check_rounded(got, want, None, nan, what);
}

/// [`assert_rounded`] for an elementwise operation: a failure also names the element's input.
#[track_caller]
pub fn assert_rounded_from<H: Half>(got: &[H], want: &[f32], input: &[f32], nan: Nan, what: &str) {
    check_rounded(got, want, Some(input), nan, what);
}

#[track_caller]
fn check_rounded<H: Half>(got: &[H], want: &[f32], input: Option<&[f32]>, nan: Nan, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let Some(i) = (0..got.len()).find(|&i| !is_rounded(got[i], want[i], nan)) else {
        return;
    };
    let (g, w) = (got[i], want[i]);
    let r = H::round(w);
    let from = match input.and_then(|x| x.get(i)) {
        Some(x) => format!(" (from the input {x:e})"),
        None => String::new(),
    };
    let allowed = match nan {
        Nan::Quiet if w.is_nan() => "; any quiet NaN would do",
        Nan::Any if w.is_nan() => "; any NaN would do",
        _ => "",
    };
    panic!(
        "{what} ({}): element {i} of {}: got {g:?} ({:#06x}), want f32 {w:e}{from} rounded: \
         {r:?} ({:#06x}){allowed}",
        H::NAME,
        got.len(),
        g.bits(),
        r.bits()
    );
}
