//! Drives the bf16 and f16 twins of the C entry points differentially, against the `float`
//! function they twin: batch norm (training and inference forward, the latter with and without
//! NK_BN_FUSE_RELU; moments; forward from moments; backward, backward reduce and apply), layer
//! norm and RMS norm (forward and backward), group norm (forward and backward), instance norm
//! (forward) and every dropout (inverted, channel, alpha, Gaussian and uniform; forward and
//! backward; the mask returned, given or made again from `(seed, offset)`). Each input picks one
//! twin and bf16 or f16, a small shape (up to about 70 per dimension, odd sizes included; rarely
//! a large one, to reach the parallel and long-row paths, or a size beyond memory), 16-bit data
//! (raw bit patterns, so that NaN, infinities, subnormals and -0 occur, or small multiples of
//! 1/8 around offsets such as 1000, or any magnitude), parameters and statistics (NULL where
//! optional, sometimes NaN, inf, negative or huge), scalars (sometimes out of range), in place
//! or separate outputs, the context (the default, one thread, or three threads on the portable
//! ISA), and rarely a NULL data pointer, or one that is 2-byte aligned only (which the twins
//! take), or misaligned by one or three bytes. The twin runs on the 16-bit buffers, the `float`
//! function on the same data widened to f32 in buffers of its own, with the same other arguments
//! and the same context.
//!
//! Asserts (the contract of half-precision data): no crash or sanitizer report; the twin's
//! status is the `float` function's, except that a data pointer off 2-byte alignment gives
//! NK_ERR_MISALIGNED unless an error that comes first (NULL, OVERFLOW, BAD_SHAPE, BAD_ARGUMENT)
//! applies; on error no byte of any of the twin's buffers changed; on success no input changed,
//! every data output element is the `float` output rounded once to nearest, ties to even (a NaN
//! for a NaN, of any payload), and saved and running statistics, moments, sums, parameter
//! gradients and masks are bitwise the `float` function's, except that a NaN may be any NaN
//! there too: when the data hold several NaN, which one's sign and payload a sum ends with
//! depends on the operand order the compiler picks for each instance of the kernels (Rust does
//! not specify the NaN an operation returns), so the f32 and 16-bit instances may differ.
//!
//! Run: `cargo +nightly fuzz run half_ffi -- -max_total_time=60` (from `fuzz/`).
#![no_main]

mod common;

use common::{Input, context, huge};
use libfuzzer_sys::fuzz_target;
use normkit::ffi::*;
use std::alloc::{Layout, alloc, dealloc};

/// Most elements of the data of an ordinary call.
const SMALL: usize = 4096;
/// Most elements of the data of a large call: beyond the 2^15 elements from which the work is
/// split into parallel tasks.
const LARGE: usize = 70_000;
/// The length of a buffer whose size in the call is beyond memory (the call must fail before
/// touching it, or find the tensor empty).
const CAP: usize = 16;

/// What a data output holds before the call: a finite value in both types, so that an element
/// a call legitimately leaves alone reads the same in both calls.
const SENTINEL: u16 = 0xC0A5;
/// What a float, double or byte output holds before the call (the same in both calls).
const FILL: u8 = 0xA5;

/// The data type of the twin.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ty {
    Bf16,
    F16,
}

/// NaN (quiet, negative, signaling), infinities, zeros, the smallest and largest subnormals, the
/// smallest normal, the largest finite values; index for index the same in both types.
const SPECIAL_BF16: [u16; 13] = [
    0x7FC0, 0xFFC0, 0x7F81, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F,
    0xFF7F,
];
const SPECIAL_F16: [u16; 13] = [
    0x7E00, 0xFE00, 0x7C01, 0x7C00, 0xFC00, 0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF,
    0xFBFF,
];
/// Edge values of float parameters and statistics.
const SPECIAL_F32: [f32; 12] = [
    f32::NAN,
    -f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    0.0,
    -0.0,
    3.0e38,
    -3.0e38,
    1.0e-40,
    -1.0,
    1.0e-45,
    65504.0,
];

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Bf16 => "bf16",
            Ty::F16 => "f16",
        }
    }
    /// The value as f32, exactly (an f16 NaN becomes quiet, as the contract's widening does).
    fn widen(self, h: u16) -> f32 {
        match self {
            Ty::Bf16 => f32::from_bits(u32::from(h) << 16),
            Ty::F16 => half::f16::from_bits(h).to_f32(),
        }
    }
    /// `v` rounded once to the type: nearest, ties to even; infinities for overflow; f16
    /// subnormals kept.
    fn narrow(self, v: f32) -> u16 {
        match self {
            Ty::Bf16 => half::bf16::from_f32(v).to_bits(),
            Ty::F16 => half::f16::from_f32(v).to_bits(),
        }
    }
    fn is_nan(self, h: u16) -> bool {
        match self {
            Ty::Bf16 => h & 0x7FFF > 0x7F80,
            Ty::F16 => h & 0x7FFF > 0x7C00,
        }
    }
    fn special(self, rng: &mut Rng) -> u16 {
        let i = rng.below(SPECIAL_BF16.len() as u64) as usize;
        match self {
            Ty::Bf16 => SPECIAL_BF16[i],
            Ty::F16 => SPECIAL_F16[i],
        }
    }
}

/// SplitMix64, seeded from the fuzz input: the values of long buffers without a byte of input
/// each.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A multiple of 1/8 in [-4, 4].
    fn small(&mut self) -> f32 {
        (self.below(65) as f32 - 32.0) / 8.0
    }
}

/// `len` values of the data type, in one of several styles chosen by the input.
fn half_values(input: &mut Input<'_>, rng: &mut Rng, ty: Ty, len: usize) -> Vec<u16> {
    let mode = input.byte() % 10;
    let offset = [
        0.0, 0.0, 0.0, 1000.0, -3.5, 0.25, 1.0e-6, 6.0e4, 3.0e38, -250.0,
    ][usize::from(input.byte() % 10)];
    let scale = [1.0, 1.0, 1.0 / 64.0, 64.0][usize::from(input.byte() % 4)];
    let constant = if input.bool() {
        ty.special(rng)
    } else {
        ty.narrow(offset + rng.small())
    };
    (0..len)
        .map(|_| match mode {
            // Raw bit patterns: every class of value.
            0 | 1 => rng.next() as u16,
            // Small multiples of 1/8 around an offset, rounded to the type.
            2..=5 => ty.narrow(offset + rng.small() * scale),
            // The same with an edge value one time in eight.
            6 => {
                if rng.below(8) == 0 {
                    ty.special(rng)
                } else {
                    ty.narrow(offset + rng.small() * scale)
                }
            }
            // One value everywhere (a zero variance).
            7 => constant,
            // Straight from the input (zeros once it runs out).
            8 => u16::from_le_bytes([input.byte(), input.byte()]),
            // Any magnitude from 2^-40 to 2^40 (f16 overflow and subnormals, bf16 exact).
            _ => {
                let e = rng.below(81) as i32 - 40;
                let m = 1.0 + rng.below(8) as f32 / 8.0;
                let s = if rng.below(2) == 0 { 1.0 } else { -1.0 };
                ty.narrow(s * m * 2f32.powi(e))
            }
        })
        .collect()
}

/// The kind of a float parameter or statistic.
#[derive(Clone, Copy)]
enum Gen {
    /// gamma, beta, gradients: small values of either sign.
    Affine,
    /// Means: small, or around 1000.
    Mean,
    /// Variances and inverse standard deviations: positive.
    Positive,
}

fn float_values(input: &mut Input<'_>, rng: &mut Rng, len: usize, gen_: Gen) -> Vec<f32> {
    let mode = input.byte() % 16;
    (0..len)
        .map(|_| {
            let special = SPECIAL_F32[rng.below(SPECIAL_F32.len() as u64) as usize];
            match (mode, gen_) {
                (15, _) => f32::from_bits(rng.next() as u32),
                (14, _) => special,
                (13, _) if rng.below(8) == 0 => special,
                (12, Gen::Affine) => 1.0,
                (11, Gen::Affine) => rng.small() * 1.0e4,
                (_, Gen::Affine) => rng.small(),
                (10..=12, Gen::Mean) => 1000.0 + rng.small(),
                (_, Gen::Mean) => rng.small(),
                (12, Gen::Positive) => 1.0e-30 * (1.0 + rng.below(64) as f32),
                (11, Gen::Positive) => 1.0e6 * (1.0 + rng.below(64) as f32),
                (_, Gen::Positive) => 0.05 + rng.below(256) as f32 / 32.0,
            }
        })
        .collect()
}

/// Element kinds: the data type (16-bit in the twin's call, f32 in the reference call), and the
/// types that are the same in both calls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Half,
    F32,
    F64,
    U8,
}

impl Kind {
    /// Bytes per element in the twin's call and in the reference call.
    fn sizes(self) -> (usize, usize) {
        match self {
            Kind::Half => (2, 4),
            Kind::F32 => (4, 4),
            Kind::F64 => (8, 8),
            Kind::U8 => (1, 1),
        }
    }
}

/// An allocation of exactly the bytes a buffer needs (so that AddressSanitizer sees any access
/// past them), 8-byte aligned.
struct Mem {
    ptr: *mut u8,
    layout: Layout,
}

impl Mem {
    /// `content` placed `misalign` bytes past the start.
    fn new(content: &[u8], misalign: usize) -> Mem {
        let layout = Layout::from_size_align((misalign + content.len()).max(1), 8).unwrap();
        // SAFETY: the size is not zero.
        let ptr = unsafe { alloc(layout) };
        assert!(!ptr.is_null());
        // SAFETY: `ptr` is valid for `layout.size()` bytes.
        unsafe {
            ptr.write_bytes(0x5A, layout.size());
            std::ptr::copy_nonoverlapping(content.as_ptr(), ptr.add(misalign), content.len());
        }
        Mem { ptr, layout }
    }
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: the allocation is valid for its layout's size.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }.to_vec()
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `Mem::new`.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// One buffer of a call, in the twin's version and the reference's.
struct Buf {
    name: &'static str,
    kind: Kind,
    len: usize,
    writes: bool,
    null: bool,
    /// Passed as another buffer's pointer (in place); then it has no memory of its own.
    same_as: Option<usize>,
    /// Bytes past alignment of the twin's pointer.
    misalign: usize,
    twin: Option<Mem>,
    reference: Option<Mem>,
    twin_before: Vec<u8>,
}

/// The buffers and context of one differential call.
struct Case {
    ty: Ty,
    ctx: *mut nk_context,
    /// The call's arguments, for failure messages.
    what: String,
    bufs: Vec<Buf>,
}

impl Case {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        name: &'static str,
        kind: Kind,
        len: usize,
        writes: bool,
        twin: &[u8],
        reference: &[u8],
        misalign: usize,
    ) -> usize {
        let t = Mem::new(twin, misalign);
        let twin_before = t.bytes();
        self.bufs.push(Buf {
            name,
            kind,
            len,
            writes,
            null: false,
            same_as: None,
            misalign,
            twin: Some(t),
            reference: Some(Mem::new(reference, 0)),
            twin_before,
        });
        self.bufs.len() - 1
    }

    /// A data buffer: `bits` in the twin's call, widened in the reference call. The twin's
    /// pointer is rarely 2 or 6 bytes past 8-byte alignment (aligned for the 16-bit type only,
    /// which the twins take) or 1 or 3 bytes (misaligned).
    fn half(
        &mut self,
        input: &mut Input<'_>,
        name: &'static str,
        bits: &[u16],
        writes: bool,
    ) -> usize {
        let twin: Vec<u8> = bits.iter().flat_map(|h| h.to_le_bytes()).collect();
        let reference: Vec<u8> = bits
            .iter()
            .flat_map(|&h| self.ty.widen(h).to_le_bytes())
            .collect();
        let misalign = match input.byte() % 32 {
            31 => 1,
            30 => 2,
            29 => 6,
            28 => 3,
            _ => 0,
        };
        self.add(
            name,
            Kind::Half,
            bits.len(),
            writes,
            &twin,
            &reference,
            misalign,
        )
    }

    /// A required data input (NULL one time in 48).
    fn data_in(
        &mut self,
        input: &mut Input<'_>,
        rng: &mut Rng,
        name: &'static str,
        len: usize,
    ) -> usize {
        let bits = half_values(input, rng, self.ty, len);
        let b = self.half(input, name, &bits, false);
        self.bufs[b].null = rarely(input, 48);
        b
    }

    /// A data output: in place on `replaces` a third of the time (when given), else its own
    /// memory; NULL a quarter of the time if `optional`, one time in 48 if not.
    fn data_out(
        &mut self,
        input: &mut Input<'_>,
        name: &'static str,
        len: usize,
        replaces: Option<usize>,
        optional: bool,
    ) -> usize {
        let b = match replaces {
            Some(r) if rarely(input, 3) => self.alias(name, r),
            _ => self.half(input, name, &vec![SENTINEL; len], true),
        };
        self.bufs[b].null = rarely(input, if optional { 4 } else { 48 });
        b
    }

    /// An output passed as buffer `of`'s pointer (in place, or a forbidden overlap).
    fn alias(&mut self, name: &'static str, of: usize) -> usize {
        let (kind, len) = (self.bufs[of].kind, self.bufs[of].len);
        self.bufs.push(Buf {
            name,
            kind,
            len,
            writes: true,
            null: false,
            same_as: Some(of),
            misalign: 0,
            twin: None,
            reference: None,
            twin_before: Vec::new(),
        });
        self.bufs.len() - 1
    }

    /// A float input of the given kind: NULL a third of the time if `optional`, one time in 48
    /// if not.
    fn param(
        &mut self,
        input: &mut Input<'_>,
        rng: &mut Rng,
        name: &'static str,
        len: usize,
        gen_: Gen,
        optional: bool,
    ) -> usize {
        let v = float_values(input, rng, len, gen_);
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let b = self.add(name, Kind::F32, len, false, &bytes, &bytes, 0);
        self.bufs[b].null = rarely(input, if optional { 3 } else { 48 });
        b
    }

    /// A float buffer the call reads and updates (running statistics); never NULL here.
    fn inout(
        &mut self,
        input: &mut Input<'_>,
        rng: &mut Rng,
        name: &'static str,
        len: usize,
        gen_: Gen,
    ) -> usize {
        let v = float_values(input, rng, len, gen_);
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add(name, Kind::F32, len, true, &bytes, &bytes, 0)
    }

    /// A float, double or byte output: NULL a quarter of the time if `optional`, one time in 48
    /// if not.
    fn out(
        &mut self,
        input: &mut Input<'_>,
        name: &'static str,
        kind: Kind,
        len: usize,
        optional: bool,
    ) -> usize {
        let bytes = vec![FILL; len * kind.sizes().0];
        let b = self.add(name, kind, len, true, &bytes, &bytes, 0);
        self.bufs[b].null = rarely(input, if optional { 4 } else { 48 });
        b
    }

    /// A double input (moments, sums): `len` values of the kind, widened.
    fn doubles(
        &mut self,
        input: &mut Input<'_>,
        rng: &mut Rng,
        name: &'static str,
        len: usize,
        gen_: Gen,
        times: f64,
    ) -> usize {
        let v = float_values(input, rng, len, gen_);
        let bytes: Vec<u8> = v
            .iter()
            .flat_map(|&x| (f64::from(x) * times).to_le_bytes())
            .collect();
        let b = self.add(name, Kind::F64, len, false, &bytes, &bytes, 0);
        self.bufs[b].null = rarely(input, 48);
        b
    }

    /// A mask input: random bytes, or NULL a third of the time.
    fn mask_in(&mut self, input: &mut Input<'_>, rng: &mut Rng, len: usize) -> usize {
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let b = self.add("mask", Kind::U8, len, false, &bytes, &bytes, 0);
        self.bufs[b].null = rarely(input, 3);
        b
    }

    /// The pointer passed for a buffer in the twin's call or in the reference call.
    fn ptr(&self, b: usize, twin: bool) -> *mut u8 {
        let s = &self.bufs[b];
        if s.null {
            return std::ptr::null_mut();
        }
        if let Some(of) = s.same_as {
            return self.ptr(of, twin);
        }
        if twin {
            // SAFETY: `misalign` bytes are inside the allocation.
            unsafe { s.twin.as_ref().unwrap().ptr.add(s.misalign) }
        } else {
            s.reference.as_ref().unwrap().ptr
        }
    }
    /// The pointer of the twin's call.
    fn t<T>(&self, b: usize) -> *mut T {
        self.ptr(b, true).cast()
    }
    /// The pointer of the reference call.
    fn r<T>(&self, b: usize) -> *mut T {
        self.ptr(b, false).cast()
    }

    /// A buffer's elements now, as bytes.
    fn read(&self, b: usize, twin: bool) -> Vec<u8> {
        let s = &self.bufs[b];
        let (t, r) = s.kind.sizes();
        let bytes = s.len * if twin { t } else { r };
        let p = self.ptr(b, twin);
        if p.is_null() || bytes == 0 {
            return Vec::new();
        }
        // SAFETY: the buffer (or the one it is in place on) holds `len` elements.
        unsafe { std::slice::from_raw_parts(p, bytes) }.to_vec()
    }

    /// Whether a successful call may write a buffer's memory: it is an output, or an output is
    /// in place on it.
    fn written(&self, b: usize) -> bool {
        self.bufs[b].writes
            || self
                .bufs
                .iter()
                .any(|s| s.writes && !s.null && s.same_as == Some(b))
    }

    /// Checks the twin's status and buffers against the reference call's.
    fn check(&self, op: &str, twin: nk_status, reference: nk_status) {
        use nk_status::*;
        let what = format!("{op}_{} ({})", self.ty.name(), self.what);
        assert_ne!(
            reference, NK_ERR_INTERNAL,
            "{what}: the float function failed inside"
        );
        let misaligned = (0..self.bufs.len()).any(|b| {
            self.bufs[b].kind == Kind::Half && !(self.ptr(b, true) as usize).is_multiple_of(2)
        });
        let expect = match reference {
            NK_ERR_NULL_POINTER | NK_ERR_OVERFLOW | NK_ERR_BAD_SHAPE | NK_ERR_BAD_ARGUMENT => {
                reference
            }
            _ if misaligned => NK_ERR_MISALIGNED,
            _ => reference,
        };
        assert_eq!(
            twin,
            expect,
            "{what}: status (the float function gave {reference:?}{})",
            if misaligned {
                "; a data pointer is misaligned"
            } else {
                ""
            }
        );
        // Memory: on error nothing changed; on success inputs did not, nor the bytes before a
        // misaligned buffer.
        for (b, s) in self.bufs.iter().enumerate() {
            let Some(mem) = &s.twin else { continue };
            let now = mem.bytes();
            let keep = if twin == NK_OK && self.written(b) {
                s.misalign
            } else {
                now.len()
            };
            if let Some(j) = (0..keep).find(|&j| now[j] != s.twin_before[j]) {
                panic!(
                    "{what}: status {twin:?}, but byte {j} of {} changed ({:#04x} -> {:#04x})",
                    s.name, s.twin_before[j], now[j]
                );
            }
        }
        if twin != NK_OK {
            return;
        }
        for (b, s) in self.bufs.iter().enumerate() {
            if !s.writes || self.ptr(b, true).is_null() {
                continue;
            }
            let (got, want) = (self.read(b, true), self.read(b, false));
            match s.kind {
                Kind::Half => {
                    for i in 0..s.len {
                        let g = u16::from_le_bytes([got[2 * i], got[2 * i + 1]]);
                        let f = f32::from_le_bytes(want[4 * i..4 * i + 4].try_into().unwrap());
                        let w = self.ty.narrow(f);
                        assert!(
                            g == w || (self.ty.is_nan(g) && self.ty.is_nan(w)),
                            "{what}: {}[{i}] = {g:#06x} ({}), want {w:#06x} ({}): the float result {f:e} ({:#010x}) rounded",
                            s.name,
                            self.ty.widen(g),
                            self.ty.widen(w),
                            f.to_bits()
                        );
                    }
                }
                Kind::F32 => {
                    for (i, (g, w)) in got.chunks(4).zip(want.chunks(4)).enumerate() {
                        let g = f32::from_le_bytes(g.try_into().unwrap());
                        let w = f32::from_le_bytes(w.try_into().unwrap());
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{what}: {}[{i}] = {g:e} ({:#010x}), the float function's {w:e} ({:#010x})",
                            s.name,
                            g.to_bits(),
                            w.to_bits()
                        );
                    }
                }
                Kind::F64 => {
                    for (i, (g, w)) in got.chunks(8).zip(want.chunks(8)).enumerate() {
                        let g = f64::from_le_bytes(g.try_into().unwrap());
                        let w = f64::from_le_bytes(w.try_into().unwrap());
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{what}: {}[{i}] = {g:e} ({:#018x}), the float function's {w:e} ({:#018x})",
                            s.name,
                            g.to_bits(),
                            w.to_bits()
                        );
                    }
                }
                Kind::U8 => {
                    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                        panic!(
                            "{what}: {}[{i}] = {:#04x}, the float function's {:#04x}",
                            s.name, got[i], want[i]
                        );
                    }
                }
            }
        }
    }
}

/// Calls the bf16 or the f16 twin (the pointer helpers infer `nk_bf16` or `nk_f16` from it).
macro_rules! twin {
    ($c:expr, $bf16:ident, $f16:ident, $($arg:expr),* $(,)?) => {
        match $c.ty {
            // SAFETY: every pointer is NULL or valid for its extent in the contract.
            Ty::Bf16 => unsafe { $bf16($($arg),*) },
            // SAFETY: as above.
            Ty::F16 => unsafe { $f16($($arg),*) },
        }
    };
}

/// Whether a rare choice is taken: one time in `n`, never once the input has run out (so that
/// a short input makes an ordinary call).
fn rarely(input: &mut Input<'_>, n: u8) -> bool {
    input.byte() % n == n - 1
}

/// A size up to `max`: sometimes 0, 1 or `max`; 5 once the input has run out.
fn dim(input: &mut Input<'_>, max: usize) -> usize {
    match input.byte() % 16 {
        0 => max.min(5),
        1 => 0,
        2 | 3 => 1,
        4 => max,
        _ => input.size(max),
    }
}

/// The product of `dims`, if it is a size in memory.
fn product(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d))
        .filter(|&p| p <= 1 << 24)
}

/// The length of a buffer of the product of `dims`; `CAP` when that is beyond memory.
fn len_of(dims: &[usize]) -> usize {
    product(dims).unwrap_or(CAP)
}

/// The bytes of a mask of the product of `dims` bits; `CAP` when that is beyond memory.
fn mask_bytes(dims: &[usize]) -> usize {
    product(dims).map_or(CAP, |bits| bits.div_ceil(8))
}

/// A tensor shape and its buffer lengths.
struct Dims {
    shape: nk_shape,
    /// Elements.
    n: usize,
    /// Channels.
    c: usize,
    /// Values per channel (`batch * spatial`), as the count of the global statistics.
    count: u64,
}

fn shape_of(input: &mut Input<'_>, c: &mut Case) -> Dims {
    let large = rarely(input, 32);
    let mut batch = dim(input, if large { 9 } else { 6 });
    let mut channels = dim(input, 70);
    let mut spatial = if large {
        1 + usize::from(input.byte()) * 5
    } else {
        dim(input, 70)
    };
    let limit = if large { LARGE } else { SMALL };
    if batch * channels * spatial > limit {
        spatial = (limit / (batch * channels)).max(1);
        channels = channels.min(limit / batch.max(1));
    }
    let layout = if rarely(input, 32) {
        input.layout()
    } else {
        i32::from(input.byte() & 1)
    };
    if rarely(input, 64) {
        if input.bool() {
            batch = huge(input);
        } else {
            spatial = huge(input);
        }
    }
    c.what = format!(
        "{}, shape {batch} x {channels} x {spatial}, layout {layout}",
        c.what
    );
    Dims {
        shape: nk_shape {
            batch,
            channels,
            spatial,
            layout,
        },
        n: len_of(&[batch, channels, spatial]),
        c: channels,
        count: batch.saturating_mul(spatial) as u64,
    }
}

/// Rows and columns of a row norm.
fn rows_of(input: &mut Input<'_>, c: &mut Case) -> (usize, usize) {
    let large = rarely(input, 32);
    let mut rows = dim(input, 70);
    let mut cols = if large {
        1 + usize::from(input.byte()) * 40
    } else {
        dim(input, 70)
    };
    let limit = if large { LARGE } else { SMALL };
    if rows * cols > limit {
        rows = (limit / cols).max(1);
    }
    if rarely(input, 64) {
        if input.bool() {
            rows = huge(input);
        } else {
            cols = huge(input);
        }
    }
    c.what = format!("{}, rows {rows}, cols {cols}", c.what);
    (rows, cols)
}

fn eps_of(input: &mut Input<'_>) -> f32 {
    match input.byte() % 16 {
        12 => 0.0,
        13 => 1.0e-3,
        14 => 1.0,
        15 => input.scalar(1.0e-5),
        _ => 1.0e-5,
    }
}

fn momentum_of(input: &mut Input<'_>) -> f32 {
    match input.byte() % 8 {
        5 => input.scalar(0.1),
        6 => 0.0,
        7 => 1.0,
        _ => 0.1,
    }
}

/// Flags: none or `usual`, rarely anything (unknown bits, or flags of other calls).
fn flags_of(input: &mut Input<'_>, usual: u32) -> u32 {
    match input.byte() % 16 {
        15 => input.flags(NK_BN_RUNNING_VAR_BIASED | NK_BN_FUSE_RELU),
        b if b % 2 == 1 => usual,
        _ => 0,
    }
}

/// The global count of values per channel: mostly a multiple of the local one, sometimes 0,
/// less than the local count or anything.
fn count_of(input: &mut Input<'_>, local: u64) -> u64 {
    match input.byte() % 8 {
        4 => 0,
        5 => local.saturating_sub(1),
        6 => input.u64(),
        7 => local.saturating_add(u64::from(input.byte())),
        _ => local.saturating_mul(1 + u64::from(input.byte() % 4)),
    }
}

/// Running statistics: both, neither, or (rarely) only one.
fn running(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng, len: usize) -> (usize, usize) {
    let rm = c.inout(input, rng, "running_mean", len, Gen::Mean);
    let rv = c.inout(input, rng, "running_var", len, Gen::Positive);
    match input.byte() % 32 {
        31 => c.bufs[rm].null = true,
        30 => c.bufs[rv].null = true,
        21..=29 => {
            c.bufs[rm].null = true;
            c.bufs[rv].null = true;
        }
        _ => {}
    }
    (rm, rv)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let op = input.byte() % 24;
    let ty = if input.bool() { Ty::Bf16 } else { Ty::F16 };
    let choice = input.byte();
    // Two bytes of seed: the values come from the generator, their style from the input.
    let mut rng = Rng(u64::from(u16::from_le_bytes([input.byte(), input.byte()])));
    let mut c = Case {
        ty,
        ctx: context(choice),
        what: format!("context {}", choice % 4),
        bufs: Vec::new(),
    };
    let (input, rng) = (&mut input, &mut rng);
    match op {
        0 => batchnorm_training(&mut c, input, rng, false),
        1 => batchnorm_inference(&mut c, input, rng),
        2 => moments(&mut c, input, rng),
        3 => batchnorm_training(&mut c, input, rng, true),
        4 => batchnorm_backward(&mut c, input, rng),
        5 => batchnorm_backward_reduce(&mut c, input, rng),
        6 => batchnorm_backward_apply(&mut c, input, rng),
        7 => layernorm_forward(&mut c, input, rng),
        8 => layernorm_backward(&mut c, input, rng),
        9 => rmsnorm_forward(&mut c, input, rng),
        10 => rmsnorm_backward(&mut c, input, rng),
        11 | 13 => groupnorm_forward(&mut c, input, rng, op == 13),
        12 => groupnorm_backward(&mut c, input, rng),
        _ => dropout(&mut c, input, rng, op),
    }
});

/// Training forward, from the batch (`nk_batchnorm_forward_training`) or from given moments
/// (`nk_batchnorm_forward_from_moments`).
fn batchnorm_training(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng, from_moments: bool) {
    let d = shape_of(input, c);
    let x = c.data_in(input, rng, "x", d.n);
    let y = c.data_out(input, "y", d.n, Some(x), false);
    let gamma = c.param(input, rng, "gamma", d.c, Gen::Affine, true);
    let beta = c.param(input, rng, "beta", d.c, Gen::Affine, true);
    let (eps, momentum) = (eps_of(input), momentum_of(input));
    let flags = flags_of(input, NK_BN_RUNNING_VAR_BIASED);
    let (rm, rv) = running(c, input, rng, d.c);
    let sm = c.out(input, "save_mean", Kind::F32, d.c, true);
    let si = c.out(input, "save_invstd", Kind::F32, d.c, true);
    c.what = format!(
        "{}, eps {eps:e}, momentum {momentum:e}, flags {flags:#x}",
        c.what
    );
    if !from_moments {
        let st = twin!(
            c,
            nk_batchnorm_forward_training_bf16,
            nk_batchnorm_forward_training_f16,
            c.ctx,
            d.shape,
            c.t(x),
            c.t(y),
            c.t(gamma),
            c.t(beta),
            eps,
            momentum,
            flags,
            c.t(rm),
            c.t(rv),
            c.t(sm),
            c.t(si),
        );
        // SAFETY: every pointer is NULL or valid for its extent in the contract.
        let sr = unsafe {
            nk_batchnorm_forward_training(
                c.ctx,
                d.shape,
                c.r(x),
                c.r(y),
                c.r(gamma),
                c.r(beta),
                eps,
                momentum,
                flags,
                c.r(rm),
                c.r(rv),
                c.r(sm),
                c.r(si),
            )
        };
        c.check("batchnorm_forward_training", st, sr);
        return;
    }
    let count = count_of(input, d.count);
    let mean = c.doubles(input, rng, "mean", d.c, Gen::Mean, 1.0);
    let m2 = c.doubles(input, rng, "m2", d.c, Gen::Positive, count as f64);
    c.what = format!("{}, count {count}", c.what);
    let st = twin!(
        c,
        nk_batchnorm_forward_from_moments_bf16,
        nk_batchnorm_forward_from_moments_f16,
        c.ctx,
        d.shape,
        c.t(x),
        c.t(y),
        c.t(gamma),
        c.t(beta),
        count,
        c.t(mean),
        c.t(m2),
        eps,
        momentum,
        flags,
        c.t(rm),
        c.t(rv),
        c.t(sm),
        c.t(si),
    );
    // SAFETY: as above.
    let sr = unsafe {
        nk_batchnorm_forward_from_moments(
            c.ctx,
            d.shape,
            c.r(x),
            c.r(y),
            c.r(gamma),
            c.r(beta),
            count,
            c.r(mean),
            c.r(m2),
            eps,
            momentum,
            flags,
            c.r(rm),
            c.r(rv),
            c.r(sm),
            c.r(si),
        )
    };
    c.check("batchnorm_forward_from_moments", st, sr);
}

fn batchnorm_inference(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng) {
    let d = shape_of(input, c);
    let x = c.data_in(input, rng, "x", d.n);
    let y = c.data_out(input, "y", d.n, Some(x), false);
    let gamma = c.param(input, rng, "gamma", d.c, Gen::Affine, true);
    let beta = c.param(input, rng, "beta", d.c, Gen::Affine, true);
    let mean = c.param(input, rng, "mean", d.c, Gen::Mean, false);
    let var = c.param(input, rng, "var", d.c, Gen::Positive, false);
    let eps = eps_of(input);
    // With and without the fused ReLU.
    let flags = flags_of(input, NK_BN_FUSE_RELU);
    c.what = format!("{}, eps {eps:e}, flags {flags:#x}", c.what);
    let st = twin!(
        c,
        nk_batchnorm_forward_inference_bf16,
        nk_batchnorm_forward_inference_f16,
        c.ctx,
        d.shape,
        c.t(x),
        c.t(y),
        c.t(gamma),
        c.t(beta),
        c.t(mean),
        c.t(var),
        eps,
        flags,
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr = unsafe {
        nk_batchnorm_forward_inference(
            c.ctx,
            d.shape,
            c.r(x),
            c.r(y),
            c.r(gamma),
            c.r(beta),
            c.r(mean),
            c.r(var),
            eps,
            flags,
        )
    };
    c.check("batchnorm_forward_inference", st, sr);
}

fn moments(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng) {
    let d = shape_of(input, c);
    let x = c.data_in(input, rng, "x", d.n);
    let mean = c.out(input, "mean", Kind::F64, d.c, false);
    let m2 = c.out(input, "m2", Kind::F64, d.c, false);
    let st = twin!(
        c,
        nk_moments_bf16,
        nk_moments_f16,
        c.ctx,
        d.shape,
        c.t(x),
        c.t(mean),
        c.t(m2)
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr = unsafe { nk_moments(c.ctx, d.shape, c.r(x), c.r(mean), c.r(m2)) };
    c.check("moments", st, sr);
}

/// The inputs common to the batch-norm backward calls: x, dy, save_mean, save_invstd.
fn backward_inputs(
    c: &mut Case,
    input: &mut Input<'_>,
    rng: &mut Rng,
    n: usize,
    stats: usize,
) -> [usize; 4] {
    let x = c.data_in(input, rng, "x", n);
    let dy = c.data_in(input, rng, "dy", n);
    let sm = c.param(input, rng, "save_mean", stats, Gen::Mean, false);
    let si = c.param(input, rng, "save_invstd", stats, Gen::Positive, false);
    [x, dy, sm, si]
}

/// dx: in place on dy a third of the time, rarely (a forbidden overlap) on x.
fn dx_of(
    c: &mut Case,
    input: &mut Input<'_>,
    n: usize,
    x: usize,
    dy: usize,
    optional: bool,
) -> usize {
    if rarely(input, 32) {
        c.alias("dx", x)
    } else {
        c.data_out(input, "dx", n, Some(dy), optional)
    }
}

fn batchnorm_backward(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng) {
    let d = shape_of(input, c);
    let [x, dy, sm, si] = backward_inputs(c, input, rng, d.n, d.c);
    let dx = dx_of(c, input, d.n, x, dy, true);
    let gamma = c.param(input, rng, "gamma", d.c, Gen::Affine, true);
    let dgamma = c.out(input, "dgamma", Kind::F32, d.c, true);
    let dbeta = c.out(input, "dbeta", Kind::F32, d.c, true);
    let st = twin!(
        c,
        nk_batchnorm_backward_bf16,
        nk_batchnorm_backward_f16,
        c.ctx,
        d.shape,
        c.t(x),
        c.t(dy),
        c.t(dx),
        c.t(gamma),
        c.t(sm),
        c.t(si),
        c.t(dgamma),
        c.t(dbeta),
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr = unsafe {
        nk_batchnorm_backward(
            c.ctx,
            d.shape,
            c.r(x),
            c.r(dy),
            c.r(dx),
            c.r(gamma),
            c.r(sm),
            c.r(si),
            c.r(dgamma),
            c.r(dbeta),
        )
    };
    c.check("batchnorm_backward", st, sr);
}

fn batchnorm_backward_reduce(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng) {
    let d = shape_of(input, c);
    let [x, dy, sm, si] = backward_inputs(c, input, rng, d.n, d.c);
    let sum_dy = c.out(input, "sum_dy", Kind::F64, d.c, false);
    let sum_dy_xhat = c.out(input, "sum_dy_xhat", Kind::F64, d.c, false);
    let st = twin!(
        c,
        nk_batchnorm_backward_reduce_bf16,
        nk_batchnorm_backward_reduce_f16,
        c.ctx,
        d.shape,
        c.t(x),
        c.t(dy),
        c.t(sm),
        c.t(si),
        c.t(sum_dy),
        c.t(sum_dy_xhat),
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr = unsafe {
        nk_batchnorm_backward_reduce(
            c.ctx,
            d.shape,
            c.r(x),
            c.r(dy),
            c.r(sm),
            c.r(si),
            c.r(sum_dy),
            c.r(sum_dy_xhat),
        )
    };
    c.check("batchnorm_backward_reduce", st, sr);
}

fn batchnorm_backward_apply(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng) {
    let d = shape_of(input, c);
    let [x, dy, sm, si] = backward_inputs(c, input, rng, d.n, d.c);
    let dx = dx_of(c, input, d.n, x, dy, false);
    let gamma = c.param(input, rng, "gamma", d.c, Gen::Affine, true);
    let count = count_of(input, d.count);
    let sum_dy = c.doubles(input, rng, "sum_dy", d.c, Gen::Affine, count as f64);
    let sum_dy_xhat = c.doubles(input, rng, "sum_dy_xhat", d.c, Gen::Affine, count as f64);
    c.what = format!("{}, count {count}", c.what);
    let st = twin!(
        c,
        nk_batchnorm_backward_apply_bf16,
        nk_batchnorm_backward_apply_f16,
        c.ctx,
        d.shape,
        c.t(x),
        c.t(dy),
        c.t(dx),
        c.t(gamma),
        c.t(sm),
        c.t(si),
        count,
        c.t(sum_dy),
        c.t(sum_dy_xhat),
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr = unsafe {
        nk_batchnorm_backward_apply(
            c.ctx,
            d.shape,
            c.r(x),
            c.r(dy),
            c.r(dx),
            c.r(gamma),
            c.r(sm),
            c.r(si),
            count,
            c.r(sum_dy),
            c.r(sum_dy_xhat),
        )
    };
    c.check("batchnorm_backward_apply", st, sr);
}

fn layernorm_forward(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng) {
    let (rows, cols) = rows_of(input, c);
    let n = len_of(&[rows, cols]);
    let (r, k) = (len_of(&[rows]), len_of(&[cols]));
    let x = c.data_in(input, rng, "x", n);
    let y = c.data_out(input, "y", n, Some(x), false);
    let gamma = c.param(input, rng, "gamma", k, Gen::Affine, true);
    let beta = c.param(input, rng, "beta", k, Gen::Affine, true);
    let eps = eps_of(input);
    let sm = c.out(input, "save_mean", Kind::F32, r, true);
    let si = c.out(input, "save_invstd", Kind::F32, r, true);
    c.what = format!("{}, eps {eps:e}", c.what);
    let st = twin!(
        c,
        nk_layernorm_forward_bf16,
        nk_layernorm_forward_f16,
        c.ctx,
        rows,
        cols,
        c.t(x),
        c.t(y),
        c.t(gamma),
        c.t(beta),
        eps,
        c.t(sm),
        c.t(si),
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr = unsafe {
        nk_layernorm_forward(
            c.ctx,
            rows,
            cols,
            c.r(x),
            c.r(y),
            c.r(gamma),
            c.r(beta),
            eps,
            c.r(sm),
            c.r(si),
        )
    };
    c.check("layernorm_forward", st, sr);
}

fn layernorm_backward(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng) {
    let (rows, cols) = rows_of(input, c);
    let n = len_of(&[rows, cols]);
    let (r, k) = (len_of(&[rows]), len_of(&[cols]));
    let [x, dy, sm, si] = backward_inputs(c, input, rng, n, r);
    let dx = c.data_out(input, "dx", n, Some(dy), true);
    let gamma = c.param(input, rng, "gamma", k, Gen::Affine, true);
    let dgamma = c.out(input, "dgamma", Kind::F32, k, true);
    let dbeta = c.out(input, "dbeta", Kind::F32, k, true);
    let st = twin!(
        c,
        nk_layernorm_backward_bf16,
        nk_layernorm_backward_f16,
        c.ctx,
        rows,
        cols,
        c.t(x),
        c.t(dy),
        c.t(dx),
        c.t(gamma),
        c.t(sm),
        c.t(si),
        c.t(dgamma),
        c.t(dbeta),
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr = unsafe {
        nk_layernorm_backward(
            c.ctx,
            rows,
            cols,
            c.r(x),
            c.r(dy),
            c.r(dx),
            c.r(gamma),
            c.r(sm),
            c.r(si),
            c.r(dgamma),
            c.r(dbeta),
        )
    };
    c.check("layernorm_backward", st, sr);
}

fn rmsnorm_forward(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng) {
    let (rows, cols) = rows_of(input, c);
    let n = len_of(&[rows, cols]);
    let (r, k) = (len_of(&[rows]), len_of(&[cols]));
    let x = c.data_in(input, rng, "x", n);
    let y = c.data_out(input, "y", n, Some(x), false);
    let gamma = c.param(input, rng, "gamma", k, Gen::Affine, true);
    let eps = eps_of(input);
    let sr_ = c.out(input, "save_invrms", Kind::F32, r, true);
    c.what = format!("{}, eps {eps:e}", c.what);
    let st = twin!(
        c,
        nk_rmsnorm_forward_bf16,
        nk_rmsnorm_forward_f16,
        c.ctx,
        rows,
        cols,
        c.t(x),
        c.t(y),
        c.t(gamma),
        eps,
        c.t(sr_),
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr =
        unsafe { nk_rmsnorm_forward(c.ctx, rows, cols, c.r(x), c.r(y), c.r(gamma), eps, c.r(sr_)) };
    c.check("rmsnorm_forward", st, sr);
}

fn rmsnorm_backward(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng) {
    let (rows, cols) = rows_of(input, c);
    let n = len_of(&[rows, cols]);
    let (r, k) = (len_of(&[rows]), len_of(&[cols]));
    let x = c.data_in(input, rng, "x", n);
    let dy = c.data_in(input, rng, "dy", n);
    let dx = c.data_out(input, "dx", n, Some(dy), true);
    let gamma = c.param(input, rng, "gamma", k, Gen::Affine, true);
    let invrms = c.param(input, rng, "save_invrms", r, Gen::Positive, false);
    let dgamma = c.out(input, "dgamma", Kind::F32, k, true);
    let st = twin!(
        c,
        nk_rmsnorm_backward_bf16,
        nk_rmsnorm_backward_f16,
        c.ctx,
        rows,
        cols,
        c.t(x),
        c.t(dy),
        c.t(dx),
        c.t(gamma),
        c.t(invrms),
        c.t(dgamma),
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr = unsafe {
        nk_rmsnorm_backward(
            c.ctx,
            rows,
            cols,
            c.r(x),
            c.r(dy),
            c.r(dx),
            c.r(gamma),
            c.r(invrms),
            c.r(dgamma),
        )
    };
    c.check("rmsnorm_backward", st, sr);
}

/// Groups: mostly a divisor of C, sometimes 0 or anything.
fn groups_of(input: &mut Input<'_>, channels: usize) -> usize {
    let divisors: Vec<usize> = (1..=channels)
        .filter(|&g| channels.is_multiple_of(g))
        .collect();
    match input.byte() % 8 {
        6 => 0,
        7 => input.size(12),
        _ if divisors.is_empty() => 1,
        _ => divisors[usize::from(input.byte()) % divisors.len()],
    }
}

/// Group norm forward, or instance norm forward (`groups = C`).
fn groupnorm_forward(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng, instance: bool) {
    let d = shape_of(input, c);
    let groups = if instance { d.c } else { groups_of(input, d.c) };
    let saves = len_of(&[d.shape.batch, groups]);
    let x = c.data_in(input, rng, "x", d.n);
    let y = c.data_out(input, "y", d.n, Some(x), false);
    let gamma = c.param(input, rng, "gamma", d.c, Gen::Affine, true);
    let beta = c.param(input, rng, "beta", d.c, Gen::Affine, true);
    let eps = eps_of(input);
    let sm = c.out(input, "save_mean", Kind::F32, saves, true);
    let si = c.out(input, "save_invstd", Kind::F32, saves, true);
    c.what = format!("{}, groups {groups}, eps {eps:e}", c.what);
    if instance {
        let st = twin!(
            c,
            nk_instancenorm_forward_bf16,
            nk_instancenorm_forward_f16,
            c.ctx,
            d.shape,
            c.t(x),
            c.t(y),
            c.t(gamma),
            c.t(beta),
            eps,
            c.t(sm),
            c.t(si),
        );
        // SAFETY: every pointer is NULL or valid for its extent in the contract.
        let sr = unsafe {
            nk_instancenorm_forward(
                c.ctx,
                d.shape,
                c.r(x),
                c.r(y),
                c.r(gamma),
                c.r(beta),
                eps,
                c.r(sm),
                c.r(si),
            )
        };
        c.check("instancenorm_forward", st, sr);
        return;
    }
    let st = twin!(
        c,
        nk_groupnorm_forward_bf16,
        nk_groupnorm_forward_f16,
        c.ctx,
        d.shape,
        groups,
        c.t(x),
        c.t(y),
        c.t(gamma),
        c.t(beta),
        eps,
        c.t(sm),
        c.t(si),
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr = unsafe {
        nk_groupnorm_forward(
            c.ctx,
            d.shape,
            groups,
            c.r(x),
            c.r(y),
            c.r(gamma),
            c.r(beta),
            eps,
            c.r(sm),
            c.r(si),
        )
    };
    c.check("groupnorm_forward", st, sr);
}

fn groupnorm_backward(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng) {
    let d = shape_of(input, c);
    let groups = groups_of(input, d.c);
    let saves = len_of(&[d.shape.batch, groups]);
    let [x, dy, sm, si] = backward_inputs(c, input, rng, d.n, saves);
    let dx = c.data_out(input, "dx", d.n, Some(dy), true);
    let gamma = c.param(input, rng, "gamma", d.c, Gen::Affine, true);
    let dgamma = c.out(input, "dgamma", Kind::F32, d.c, true);
    let dbeta = c.out(input, "dbeta", Kind::F32, d.c, true);
    c.what = format!("{}, groups {groups}", c.what);
    let st = twin!(
        c,
        nk_groupnorm_backward_bf16,
        nk_groupnorm_backward_f16,
        c.ctx,
        d.shape,
        groups,
        c.t(x),
        c.t(dy),
        c.t(dx),
        c.t(gamma),
        c.t(sm),
        c.t(si),
        c.t(dgamma),
        c.t(dbeta),
    );
    // SAFETY: every pointer is NULL or valid for its extent in the contract.
    let sr = unsafe {
        nk_groupnorm_backward(
            c.ctx,
            d.shape,
            groups,
            c.r(x),
            c.r(dy),
            c.r(dx),
            c.r(gamma),
            c.r(sm),
            c.r(si),
            c.r(dgamma),
            c.r(dbeta),
        )
    };
    c.check("groupnorm_backward", st, sr);
}

/// The dropout calls, by `op`: 14, 15 inverted dropout forward, backward; 16, 17 channel
/// dropout; 18, 19 alpha dropout; 20, 21 Gaussian dropout; 22, 23 uniform dropout.
fn dropout(c: &mut Case, input: &mut Input<'_>, rng: &mut Rng, op: u8) {
    let backward = op % 2 == 1;
    let channel = op / 2 == 8;
    // Elements, and the buffer lengths of the data and the mask.
    let (n, shape, len, mask_len) = if channel {
        let d = shape_of(input, c);
        let mask = mask_bytes(&[d.shape.batch, d.shape.channels]);
        (0, d.shape, d.n, mask)
    } else {
        let n = match input.byte() % 64 {
            63 => huge(input),
            62 => 1 + input.u32() as usize % LARGE,
            47..=61 => input.u32() as usize % 1000,
            _ => dim(input, 70),
        };
        c.what = format!("{}, n {n}", c.what);
        let shape = nk_shape {
            batch: 0,
            channels: 0,
            spatial: 0,
            layout: 0,
        };
        let len = len_of(&[n]);
        (n, shape, len, mask_bytes(&[n]))
    };
    let (xn, yn) = if backward { ("dy", "dx") } else { ("x", "y") };
    let x = c.data_in(input, rng, xn, len);
    let y = c.data_out(input, yn, len, Some(x), false);
    // p for the masked and Gaussian calls, beta for the uniform ones.
    let p = if op >= 22 {
        match input.byte() % 8 {
            0 => input.scalar(0.5),
            1 => 0.0,
            _ => f32::from(input.byte()) / 64.0,
        }
    } else {
        input.probability()
    };
    let seed = if input.bool() {
        u64::from(input.byte())
    } else {
        input.u64()
    };
    let offset = match input.byte() % 8 {
        6 => u64::MAX - u64::from(input.byte()),
        7 => input.u64(),
        _ => u64::from(input.u32() % 1000),
    };
    let mask = match op {
        14 | 16 | 18 => c.out(input, "mask", Kind::U8, mask_len, true),
        15 | 17 | 19 => c.mask_in(input, rng, mask_len),
        _ => usize::MAX,
    };
    c.what = format!("{}, p {p:e}, seed {seed}, offset {offset}", c.what);
    let (x, y, ctx) = (x, y, c.ctx);
    let (st, sr, name) = match op {
        14 => (
            twin!(
                c,
                nk_dropout_forward_bf16,
                nk_dropout_forward_f16,
                ctx,
                n,
                c.t(x),
                c.t(y),
                p,
                seed,
                offset,
                c.t(mask)
            ),
            // SAFETY: every pointer is NULL or valid for its extent in the contract.
            unsafe { nk_dropout_forward(ctx, n, c.r(x), c.r(y), p, seed, offset, c.r(mask)) },
            "dropout_forward",
        ),
        15 => (
            twin!(
                c,
                nk_dropout_backward_bf16,
                nk_dropout_backward_f16,
                ctx,
                n,
                c.t(x),
                c.t(y),
                p,
                seed,
                offset,
                c.t(mask)
            ),
            // SAFETY: as above.
            unsafe { nk_dropout_backward(ctx, n, c.r(x), c.r(y), p, seed, offset, c.r(mask)) },
            "dropout_backward",
        ),
        16 => (
            twin!(
                c,
                nk_channel_dropout_forward_bf16,
                nk_channel_dropout_forward_f16,
                ctx,
                shape,
                c.t(x),
                c.t(y),
                p,
                seed,
                offset,
                c.t(mask)
            ),
            // SAFETY: as above.
            unsafe {
                nk_channel_dropout_forward(ctx, shape, c.r(x), c.r(y), p, seed, offset, c.r(mask))
            },
            "channel_dropout_forward",
        ),
        17 => (
            twin!(
                c,
                nk_channel_dropout_backward_bf16,
                nk_channel_dropout_backward_f16,
                ctx,
                shape,
                c.t(x),
                c.t(y),
                p,
                seed,
                offset,
                c.t(mask)
            ),
            // SAFETY: as above.
            unsafe {
                nk_channel_dropout_backward(ctx, shape, c.r(x), c.r(y), p, seed, offset, c.r(mask))
            },
            "channel_dropout_backward",
        ),
        18 => (
            twin!(
                c,
                nk_alpha_dropout_forward_bf16,
                nk_alpha_dropout_forward_f16,
                ctx,
                n,
                c.t(x),
                c.t(y),
                p,
                seed,
                offset,
                c.t(mask)
            ),
            // SAFETY: as above.
            unsafe { nk_alpha_dropout_forward(ctx, n, c.r(x), c.r(y), p, seed, offset, c.r(mask)) },
            "alpha_dropout_forward",
        ),
        19 => (
            twin!(
                c,
                nk_alpha_dropout_backward_bf16,
                nk_alpha_dropout_backward_f16,
                ctx,
                n,
                c.t(x),
                c.t(y),
                p,
                seed,
                offset,
                c.t(mask)
            ),
            // SAFETY: as above.
            unsafe {
                nk_alpha_dropout_backward(ctx, n, c.r(x), c.r(y), p, seed, offset, c.r(mask))
            },
            "alpha_dropout_backward",
        ),
        20 => (
            twin!(
                c,
                nk_gaussian_dropout_forward_bf16,
                nk_gaussian_dropout_forward_f16,
                ctx,
                n,
                c.t(x),
                c.t(y),
                p,
                seed,
                offset
            ),
            // SAFETY: as above.
            unsafe { nk_gaussian_dropout_forward(ctx, n, c.r(x), c.r(y), p, seed, offset) },
            "gaussian_dropout_forward",
        ),
        21 => (
            twin!(
                c,
                nk_gaussian_dropout_backward_bf16,
                nk_gaussian_dropout_backward_f16,
                ctx,
                n,
                c.t(x),
                c.t(y),
                p,
                seed,
                offset
            ),
            // SAFETY: as above.
            unsafe { nk_gaussian_dropout_backward(ctx, n, c.r(x), c.r(y), p, seed, offset) },
            "gaussian_dropout_backward",
        ),
        22 => (
            twin!(
                c,
                nk_uniform_dropout_forward_bf16,
                nk_uniform_dropout_forward_f16,
                ctx,
                n,
                c.t(x),
                c.t(y),
                p,
                seed,
                offset
            ),
            // SAFETY: as above.
            unsafe { nk_uniform_dropout_forward(ctx, n, c.r(x), c.r(y), p, seed, offset) },
            "uniform_dropout_forward",
        ),
        _ => (
            twin!(
                c,
                nk_uniform_dropout_backward_bf16,
                nk_uniform_dropout_backward_f16,
                ctx,
                n,
                c.t(x),
                c.t(y),
                p,
                seed,
                offset
            ),
            // SAFETY: as above.
            unsafe { nk_uniform_dropout_backward(ctx, n, c.r(x), c.r(y), p, seed, offset) },
            "uniform_dropout_backward",
        ),
    };
    c.check(name, st, sr);
}
