//! Row norms over strided rows of mixed types (`layernorm::forward_rows`,
//! `rmsnorm::forward_rows`, `nk_layernorm_forward_rows`, `nk_rmsnorm_forward_rows`), bit for bit
//! against the unfused computation built from independently tested pieces: `h = (x +
//! residual) + bias` formed per element in plain Rust (widened with the `half` crate), rounded
//! to the sum's type and stored, then the packed `f32` function on it, its output rounded once
//! to `y`'s type or quantized to i8 by a plain scalar quantizer written here from the contract.
//! Every type combination, strides (0, `cols`, wider, 2^20), odd widths, rows split over tasks,
//! streaming stores, elements between rows left untouched, in place as out of place, NaN,
//! infinities, subnormals, large offsets, i8 ties and tiny scales; every ISA this CPU has, 1, 2
//! and 3 threads; and the error contract of the C functions (order of errors, nothing written).

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]
// Index loops follow the definitions most directly.
#![allow(clippy::needless_range_loop)]

mod common;

use common::arena::Arena;
use common::check::ctx;
use common::data::Gen;
use common::half::{Half, Nan, is_rounded};
use common::prop::config;
use normkit::batchnorm::{Affine, SavedStats};
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use normkit::layernorm::{self, Dtype, RowInput, RowNormIo, RowTarget, Rows, RowsMut};
use normkit::{Context, Element, ErrorKind, InOut, Isa, bf16, f16, rmsnorm};
use proptest::prelude::*;
use std::ffi::{c_int, c_void};
use std::ptr::{null, null_mut};

const TYPES: [Dtype; 3] = [Dtype::F32, Dtype::Bf16, Dtype::F16];
const Y_TYPES: [Dtype; 4] = [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::I8];
/// Elements past every tensor's extent (the Rust API takes longer slices).
const SLACK: usize = 5;
/// What a saved statistic holds before the call (RMS norm never writes a mean).
const STAT_SENTINEL: u32 = 0x7FC0_5A5A;

// ---------------------------------------------------------------------------------------------
// Buffers of any row-norm type.

/// The elements of a tensor. Fresh buffers hold a sentinel NaN (i8: -128, which quantization
/// never gives), so that any element a call should not touch is seen to be untouched.
#[derive(Clone, Debug)]
enum Buf {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    I8(Vec<i8>),
}

impl Buf {
    fn sentinel(dt: Dtype, len: usize) -> Buf {
        match dt {
            Dtype::F32 => Buf::F32(vec![f32::from_bits(0x7FA5_A5A5); len]),
            Dtype::Bf16 => Buf::Bf16(vec![bf16::from_bits(0x7FA5); len]),
            Dtype::F16 => Buf::F16(vec![f16::from_bits(0x7D5A); len]),
            Dtype::I8 => Buf::I8(vec![-128; len]),
            _ => unreachable!("a new element type this code does not know"),
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            Buf::F32(_) => Dtype::F32,
            Buf::Bf16(_) => Dtype::Bf16,
            Buf::F16(_) => Dtype::F16,
            Buf::I8(_) => Dtype::I8,
        }
    }

    fn len(&self) -> usize {
        match self {
            Buf::F32(v) => v.len(),
            Buf::Bf16(v) => v.len(),
            Buf::F16(v) => v.len(),
            Buf::I8(v) => v.len(),
        }
    }

    /// Element `i`'s bit pattern.
    fn bits(&self, i: usize) -> u32 {
        match self {
            Buf::F32(v) => v[i].to_bits(),
            Buf::Bf16(v) => v[i].to_bits() as u32,
            Buf::F16(v) => v[i].to_bits() as u32,
            Buf::I8(v) => v[i] as u8 as u32,
        }
    }

    fn all_bits(&self) -> Vec<u32> {
        (0..self.len()).map(|i| self.bits(i)).collect()
    }

    /// Element `i` widened exactly (the `half` crate's conversions).
    fn wide(&self, i: usize) -> f32 {
        match self {
            Buf::F32(v) => v[i],
            Buf::Bf16(v) => v[i].wide(),
            Buf::F16(v) => v[i].wide(),
            Buf::I8(v) => v[i] as f32,
        }
    }

    /// Element `i` set to `v` rounded to the type (nearest even).
    fn set(&mut self, i: usize, v: f32) {
        match self {
            Buf::F32(b) => b[i] = v,
            Buf::Bf16(b) => b[i] = bf16::round(v),
            Buf::F16(b) => b[i] = f16::round(v),
            Buf::I8(b) => b[i] = v as i8,
        }
    }

    fn rows(&self, stride: usize) -> Rows<'_> {
        match self {
            Buf::F32(v) => Rows::new(&v[..], stride),
            Buf::Bf16(v) => Rows::new(&v[..], stride),
            Buf::F16(v) => Rows::new(&v[..], stride),
            Buf::I8(_) => panic!("an i8 tensor is never read"),
        }
    }

    fn rows_mut(&mut self, stride: usize) -> RowsMut<'_> {
        match self {
            Buf::F32(v) => RowsMut::new(&mut v[..], stride),
            Buf::Bf16(v) => RowsMut::new(&mut v[..], stride),
            Buf::F16(v) => RowsMut::new(&mut v[..], stride),
            Buf::I8(v) => RowsMut::new(&mut v[..], stride),
        }
    }

    fn ptr(&mut self) -> *mut c_void {
        match self {
            Buf::F32(v) => v.as_mut_ptr().cast(),
            Buf::Bf16(v) => v.as_mut_ptr().cast(),
            Buf::F16(v) => v.as_mut_ptr().cast(),
            Buf::I8(v) => v.as_mut_ptr().cast(),
        }
    }
}

/// `v` rounded to `dt` and widened back (the value a tensor of that type holds).
fn round_to(dt: Dtype, v: f32) -> f32 {
    match dt {
        Dtype::F32 => v,
        Dtype::Bf16 => bf16::round(v).wide(),
        Dtype::F16 => f16::round(v).wide(),
        Dtype::I8 => unreachable!(),
        _ => unreachable!("a new element type this code does not know"),
    }
}

/// The C value of a type.
fn c_dtype(dt: Dtype) -> c_int {
    (match dt {
        Dtype::F32 => nk_dtype::NK_DTYPE_F32,
        Dtype::Bf16 => nk_dtype::NK_DTYPE_BF16,
        Dtype::F16 => nk_dtype::NK_DTYPE_F16,
        Dtype::I8 => nk_dtype::NK_DTYPE_I8,
        _ => unreachable!("a new element type this code does not know"),
    }) as c_int
}

/// A type and a stride (as passed: 0 is packed).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spec {
    dtype: Dtype,
    stride: usize,
}

fn spec(dtype: Dtype, stride: usize) -> Spec {
    Spec { dtype, stride }
}

/// `rows` strided rows of `cols` elements in a buffer `SLACK` elements longer than the extent;
/// every element outside the rows a sentinel.
#[derive(Clone, Debug)]
struct Tensor {
    buf: Buf,
    stride: usize,
    rows: usize,
    cols: usize,
}

impl Tensor {
    fn new(s: Spec, rows: usize, cols: usize) -> Tensor {
        let eff = if s.stride == 0 { cols } else { s.stride };
        let extent = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * eff + cols
        };
        Tensor {
            buf: Buf::sentinel(s.dtype, extent + SLACK),
            stride: s.stride,
            rows,
            cols,
        }
    }

    /// Rows holding `packed` (`rows * cols` values, rounded to the type).
    fn with(s: Spec, rows: usize, cols: usize, packed: &[f32]) -> Tensor {
        let mut t = Tensor::new(s, rows, cols);
        for r in 0..rows {
            for j in 0..cols {
                t.buf.set(t.at(r, j), packed[r * cols + j]);
            }
        }
        t
    }

    fn eff(&self) -> usize {
        if self.stride == 0 {
            self.cols
        } else {
            self.stride
        }
    }

    fn at(&self, r: usize, j: usize) -> usize {
        r * self.eff() + j
    }

    /// The rows' elements, packed and widened.
    fn wide(&self) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for j in 0..self.cols {
                v.push(self.buf.wide(self.at(r, j)));
            }
        }
        v
    }

    /// Whether element `i` of the buffer lies in a row.
    fn in_row(&self, i: usize) -> bool {
        let (r, j) = (i / self.eff(), i % self.eff());
        self.cols > 0 && r < self.rows && j < self.cols
    }

    /// Panics unless every element outside the rows still holds the sentinel.
    #[track_caller]
    fn assert_gaps_untouched(&self, what: &str) {
        let fresh = Buf::sentinel(self.buf.dtype(), 1).bits(0);
        if let Some(i) = (0..self.buf.len()).find(|&i| !self.in_row(i) && self.buf.bits(i) != fresh)
        {
            panic!(
                "{what}: element {i} (outside the rows, stride {}) written: {:#x}",
                self.eff(),
                self.buf.bits(i)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases and calls.

#[derive(Clone, Debug)]
struct Case {
    rows: usize,
    cols: usize,
    centered: bool,
    x: Tensor,
    residual: Option<Tensor>,
    bias: Option<Vec<f32>>,
    /// The sum's type and stride, if stored.
    sum: Option<Spec>,
    y: Spec,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    eps: f32,
}

/// The outputs of a call: sum and y as tensors (sentinels outside the rows), the saved
/// statistics (mean stays the sentinel for RMS norm) and the i8 scales.
#[derive(Clone, Debug)]
struct Out {
    sum: Option<Tensor>,
    y: Tensor,
    mean: Vec<f32>,
    inv: Vec<f32>,
    scale: Option<Vec<f32>>,
}

impl Out {
    fn new(c: &Case) -> Out {
        Out {
            sum: c.sum.map(|s| Tensor::new(s, c.rows, c.cols)),
            y: Tensor::new(c.y, c.rows, c.cols),
            mean: vec![f32::from_bits(STAT_SENTINEL); c.rows],
            inv: vec![f32::from_bits(STAT_SENTINEL); c.rows],
            scale: (c.y.dtype == Dtype::I8).then(|| vec![f32::from_bits(STAT_SENTINEL); c.rows]),
        }
    }

    /// Every bit of every output.
    fn bits(&self) -> Vec<u32> {
        let mut v = self.y.buf.all_bits();
        if let Some(s) = &self.sum {
            v.extend(s.buf.all_bits());
        }
        v.extend(self.mean.iter().map(|m| m.to_bits()));
        v.extend(self.inv.iter().map(|m| m.to_bits()));
        if let Some(s) = &self.scale {
            v.extend(s.iter().map(|m| m.to_bits()));
        }
        v
    }
}

/// The norm of `c` over `io`, saving the statistics in `mean` and `inv`.
fn call(
    cx: &Context,
    c: &Case,
    io: RowNormIo<'_>,
    mean: &mut [f32],
    inv: &mut [f32],
) -> normkit::Result<()> {
    if c.centered {
        layernorm::forward_rows(
            cx,
            c.rows,
            c.cols,
            io,
            Affine {
                gamma: c.gamma.as_deref(),
                beta: c.beta.as_deref(),
            },
            c.eps,
            SavedStats {
                mean: Some(mean),
                invstd: Some(inv),
            },
        )
    } else {
        rmsnorm::forward_rows(cx, c.rows, c.cols, io, c.gamma.as_deref(), c.eps, Some(inv))
    }
}

/// `c` out of place through the safe API.
fn run(cx: &Context, c: &Case) -> Out {
    let mut o = Out::new(c);
    let mut io = RowNormIo::new(c.x.buf.rows(c.x.stride), o.y.buf.rows_mut(o.y.stride));
    if let Some(r) = &c.residual {
        io = io.residual(r.buf.rows(r.stride));
    }
    if let Some(b) = &c.bias {
        io = io.bias(b);
    }
    if let Some(s) = &mut o.sum {
        io = io.sum(s.buf.rows_mut(s.stride));
    }
    if let Some(s) = &mut o.scale {
        io = io.y_scale(s);
    }
    call(cx, c, io, &mut o.mean, &mut o.inv).expect("a valid call");
    o
}

// ---------------------------------------------------------------------------------------------
// The reference: the unfused computation.

/// The expected results: the values normalized (`h`, rounded through the sum's type), the
/// packed `f32` function's output and statistics on them.
struct Expect {
    h: Vec<f32>,
    y: Vec<f32>,
    mean: Vec<f32>,
    inv: Vec<f32>,
}

/// The packed function of the case's norm (`layernorm::forward` or `rmsnorm::forward`) on `x`,
/// with the case's parameters; `mean` is left as it is for RMS norm.
fn plain_forward<E: Element>(
    cx: &Context,
    c: &Case,
    x: &[E],
    y: &mut [E],
    mean: &mut [f32],
    inv: &mut [f32],
) {
    let io = InOut::Separate { x, y };
    if c.centered {
        let affine = Affine {
            gamma: c.gamma.as_deref(),
            beta: c.beta.as_deref(),
        };
        let saved = SavedStats {
            mean: Some(mean),
            invstd: Some(inv),
        };
        layernorm::forward(cx, c.rows, c.cols, io, affine, c.eps, saved).unwrap();
    } else {
        rmsnorm::forward(cx, c.rows, c.cols, io, c.gamma.as_deref(), c.eps, Some(inv)).unwrap();
    }
}

fn reference(cx: &Context, c: &Case) -> Expect {
    let (rows, cols) = (c.rows, c.cols);
    // h per element in plain Rust: each term widened to f32, added in f32 in the contract's order.
    let mut h = c.x.wide();
    if let Some(r) = &c.residual {
        for (v, a) in h.iter_mut().zip(r.wide()) {
            *v += a;
        }
    }
    if let Some(b) = &c.bias {
        for (i, v) in h.iter_mut().enumerate() {
            *v += b[i % cols];
        }
    }
    if let Some(s) = c.sum {
        for v in h.iter_mut() {
            *v = round_to(s.dtype, *v);
        }
    }
    let mut y = vec![0f32; h.len()];
    let mut mean = vec![f32::from_bits(STAT_SENTINEL); rows];
    let mut inv = vec![f32::from_bits(STAT_SENTINEL); rows];
    plain_forward(cx, c, &h, &mut y, &mut mean, &mut inv);
    Expect { h, y, mean, inv }
}

/// The contract's per-row symmetric quantization of the float output `v`, written plainly:
/// `amax = max |v|`, scale `amax / 127`, `q = nearbyint(v * (127 / amax))` (ties to even) within
/// [-127, 127]; where `127 / amax` overflows, `(v * 2^32) * (127 / (amax * 2^32))`. A row with
/// `amax = 0` gets scale 0, a row with a NaN or infinity scale NaN, both zeros.
fn quantize(v: &[f32]) -> (Vec<i8>, f32) {
    if v.iter().any(|x| !x.is_finite()) {
        return (vec![0; v.len()], f32::NAN);
    }
    let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if amax == 0.0 {
        return (vec![0; v.len()], 0.0);
    }
    let mult = 127.0f32 / amax;
    let two32 = 4294967296.0f32;
    let q = v
        .iter()
        .map(|&x| {
            let p = if mult.is_finite() {
                x * mult
            } else {
                (x * two32) * (127.0f32 / (amax * two32))
            };
            p.round_ties_even().clamp(-127.0, 127.0) as i8
        })
        .collect();
    (q, amax / 127.0)
}

/// `got` is `want` bit for bit, or both NaN (which NaN an operation on NaNs gives is not fixed).
fn same_or_nan(got: f32, want: f32) -> bool {
    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
}

/// Whether element `i` of `b` holds `want` rounded once to its type (a NaN: any quiet NaN).
fn holds(b: &Buf, i: usize, want: f32) -> bool {
    match b {
        Buf::F32(v) => same_or_nan(v[i], want),
        Buf::Bf16(v) => is_rounded(v[i], want, Nan::Quiet),
        Buf::F16(v) => is_rounded(v[i], want, Nan::Quiet),
        Buf::I8(_) => unreachable!(),
    }
}

/// Checks the outputs of `c` against the unfused reference on `cx`.
#[track_caller]
fn check(cx: &Context, c: &Case, got: &Out, what: &str) {
    let (rows, cols) = (c.rows, c.cols);
    let want = reference(cx, c);
    let elem = |t: &Tensor, k: usize| t.at(k / cols, k % cols);
    if let Some(s) = &got.sum {
        s.assert_gaps_untouched(&format!("{what}: sum"));
        if let Some(k) = (0..rows * cols).find(|&k| !holds(&s.buf, elem(s, k), want.h[k])) {
            panic!(
                "{what}: sum element {k} ({:?}): got {:e}, want {:e}",
                s.buf.dtype(),
                s.buf.wide(elem(s, k)),
                want.h[k]
            );
        }
    }
    let y = &got.y;
    y.assert_gaps_untouched(&format!("{what}: y"));
    if y.buf.dtype() == Dtype::I8 {
        let scale = got.scale.as_ref().expect("scales");
        for r in 0..rows {
            let (q, s) = quantize(&want.y[r * cols..(r + 1) * cols]);
            let gq: Vec<i8> = (0..cols)
                .map(|j| y.buf.bits(y.at(r, j)) as u8 as i8)
                .collect();
            assert!(
                same_or_nan(scale[r], s),
                "{what}: y_scale[{r}] {:e}, want {s:e}",
                scale[r]
            );
            if let Some(j) = (0..cols).find(|&j| gq[j] != q[j]) {
                panic!(
                    "{what}: row {r} col {j}: i8 {} want {} (v = {:e}, amax scale {s:e})",
                    gq[j],
                    q[j],
                    want.y[r * cols + j]
                );
            }
        }
    } else {
        assert!(got.scale.is_none());
        if let Some(k) = (0..rows * cols).find(|&k| !holds(&y.buf, elem(y, k), want.y[k])) {
            panic!(
                "{what}: y element {k} ({:?}): got {:e}, want {:e} (h = {:e})",
                y.buf.dtype(),
                y.buf.wide(elem(y, k)),
                want.y[k],
                want.h[k]
            );
        }
    }
    for r in 0..rows {
        let m = if c.centered {
            want.mean[r]
        } else {
            f32::from_bits(STAT_SENTINEL)
        };
        let pair = (got.mean[r], got.inv[r]);
        assert!(
            same_or_nan(pair.0, m) && same_or_nan(pair.1, want.inv[r]),
            "{what}: row {r} statistics {pair:?}, want ({m:e}, {:e})",
            want.inv[r]
        );
        if !c.centered {
            assert_eq!(
                got.mean[r].to_bits(),
                STAT_SENTINEL,
                "{what}: RMS wrote a mean"
            );
        }
    }
    check_twin(cx, c, &want.h, got, what);
}

/// Where the values normalized are exactly of `y`'s 16-bit type (the sum is of that type, or
/// there is nothing to add and `x` is), the fused output is bitwise the twin's on them.
fn check_twin(cx: &Context, c: &Case, h: &[f32], got: &Out, what: &str) {
    let exact = match c.sum {
        Some(s) => s.dtype == c.y.dtype,
        None => c.residual.is_none() && c.bias.is_none() && c.x.buf.dtype() == c.y.dtype,
    };
    match c.y.dtype {
        Dtype::Bf16 if exact => twin::<bf16>(cx, c, h, got, what),
        Dtype::F16 if exact => twin::<f16>(cx, c, h, got, what),
        _ => {}
    }
}

fn twin<H: Half>(cx: &Context, c: &Case, h: &[f32], got: &Out, what: &str) {
    let (rows, cols) = (c.rows, c.cols);
    let x: Vec<H> = h.iter().map(|&v| H::round(v)).collect();
    let mut y = vec![H::round(0.0); x.len()];
    let mut mean = vec![0f32; rows];
    let mut inv = vec![0f32; rows];
    plain_forward(cx, c, &x, &mut y, &mut mean, &mut inv);
    for k in 0..rows * cols {
        let g = H::from_bits(got.y.buf.bits(got.y.at(k / cols, k % cols)) as u16);
        assert!(
            g.bits() == y[k].bits() || (g.wide().is_nan() && y[k].wide().is_nan()),
            "{what}: y element {k} {g:?} is not the {} twin's {:?}",
            H::NAME,
            y[k]
        );
    }
    for r in 0..rows {
        assert!(same_or_nan(got.inv[r], inv[r]), "{what}: twin inv {r}");
        if c.centered {
            assert!(same_or_nan(got.mean[r], mean[r]), "{what}: twin mean {r}");
        }
    }
}

/// On every ISA: the call on 1 thread matches the reference, and on 2 and 3 threads gives the
/// same bits.
#[track_caller]
fn check_everywhere(c: &Case, what: &str) {
    for isa in Isa::supported() {
        let one = run(&ctx(1, isa), c);
        let what = format!("{what} {isa:?}");
        check(&ctx(1, isa), c, &one, &what);
        for threads in [2, 3] {
            let got = run(&ctx(threads, isa), c);
            assert!(
                got.bits() == one.bits(),
                "{what}: {threads} threads differ from 1"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data.

/// `rows x cols` values for a tensor of type `dt`: `kind` 0 ordinary values with an offset, 1
/// `10000 + N(0, 1)`, 2 a special case per row (a NaN, an infinity of either sign, subnormals of
/// the type, all -0.0, values near the type's top that overflow when added, or ordinary), 3
/// tiny values (about 1e-20).
fn values(g: &mut Gen, rows: usize, cols: usize, kind: u8, dt: Dtype) -> Vec<f32> {
    let n = rows * cols;
    match kind {
        0 => {
            let (o, s) = (g.range(-100.0, 100.0), g.range(0.1, 10.0));
            g.normals(n, o, s)
        }
        1 => g.normals(n, 10000.0, 1.0),
        2 => {
            let mut v = g.normals(n, 0.0, 3.0);
            let (sub, top) = match dt {
                Dtype::Bf16 => (bf16::MIN_SUBNORMAL, bf16::BIG),
                Dtype::F16 => (f16::MIN_SUBNORMAL, f16::BIG),
                _ => (f32::from_bits(1), 3.0e38),
            };
            for r in 0..rows {
                let row = &mut v[r * cols..(r + 1) * cols];
                let j = g.below(cols);
                match g.below(7) {
                    0 => row[j] = f32::NAN,
                    1 => row[j] = f32::INFINITY,
                    2 => row[j] = f32::NEG_INFINITY,
                    3 => {
                        for x in row.iter_mut() {
                            *x = sub
                                * (1 + g.below(60)) as f32
                                * if g.below(2) == 0 { 1.0 } else { -1.0 };
                        }
                    }
                    4 => row.fill(-0.0),
                    5 => {
                        for x in row.iter_mut().step_by(2) {
                            *x = top * if g.below(2) == 0 { 1.0 } else { -1.0 };
                        }
                    }
                    _ => {}
                }
            }
            v
        }
        _ => g.normals(n, 0.0, 1e-20),
    }
}

/// A case of the given layout with data of the given kinds: `params` 0 no gamma or beta, 1
/// moderate ones, 2 gamma only (with negative values).
#[allow(clippy::too_many_arguments)]
fn make_case(
    g: &mut Gen,
    (rows, cols): (usize, usize),
    centered: bool,
    x: Spec,
    residual: Option<Spec>,
    bias: bool,
    sum: Option<Spec>,
    y: Spec,
    (x_kind, r_kind): (u8, u8),
    params: u8,
) -> Case {
    let xv = values(g, rows, cols, x_kind, x.dtype);
    let residual = residual.map(|s| {
        let v = values(g, rows, cols, r_kind, s.dtype);
        Tensor::with(s, rows, cols, &v)
    });
    let (gamma, beta) = match params {
        0 => (None, None),
        1 => (
            Some(g.uniforms(cols, 0.5, 2.0)),
            Some(g.uniforms(cols, -1.0, 1.0)),
        ),
        _ => (Some(g.uniforms(cols, -2.0, 2.0)), None),
    };
    Case {
        rows,
        cols,
        centered,
        x: Tensor::with(x, rows, cols, &xv),
        residual,
        bias: bias.then(|| g.uniforms(cols, -5.0, 5.0)),
        sum,
        y,
        gamma,
        beta: if centered { beta } else { None },
        // Tiny values with eps = 0: an inverse spread beyond f32 (the f64 path).
        eps: if x_kind == 3 { 0.0 } else { 1e-5 },
    }
}

// ---------------------------------------------------------------------------------------------
// Fused = unfused.

/// Every combination of types (x, residual, sum in F32, BF16, F16 or absent where optional; y
/// any type), with and without bias, both norms: bitwise the stored sum and the packed float
/// function on it, rounded (or quantized) to y; on every ISA and 1, 2, 3 threads.
#[test]
fn every_type_combination_is_the_unfused_computation() {
    let mut g = Gen::new(11);
    let shapes = [
        (3, 17),
        (2, 1),
        (4, 33),
        (1, 7),
        (5, 16),
        (2, 769),
        (35, 1000),
    ];
    let mut k = 0usize;
    for centered in [true, false] {
        for xd in TYPES {
            for rd in [None, Some(Dtype::F32), Some(Dtype::Bf16), Some(Dtype::F16)] {
                for sd in [None, Some(Dtype::F32), Some(Dtype::Bf16), Some(Dtype::F16)] {
                    for yd in Y_TYPES {
                        for bias in [false, true] {
                            k += 1;
                            let (rows, cols) = shapes[k % shapes.len()];
                            let st = |n: usize| [0, cols, cols + 1, cols + 16][n % 4];
                            let c = make_case(
                                &mut g,
                                (rows, cols),
                                centered,
                                spec(xd, st(k)),
                                rd.map(|d| spec(d, st(k + 1))),
                                bias,
                                sd.map(|d| spec(d, st(k + 2))),
                                spec(yd, st(k + 3)),
                                ((k % 4) as u8, (k / 4 % 3) as u8),
                                (k % 3) as u8,
                            );
                            let what = format!(
                                "centered={centered} x={xd:?} residual={rd:?} sum={sd:?} \
                                 y={yd:?} bias={bias} {rows}x{cols}"
                            );
                            check_everywhere(&c, &what);
                        }
                    }
                }
            }
        }
    }
}

fn any_type() -> impl Strategy<Value = Dtype> {
    prop_oneof![Just(Dtype::F32), Just(Dtype::Bf16), Just(Dtype::F16)]
}

fn any_y_type() -> impl Strategy<Value = Dtype> {
    prop_oneof![
        Just(Dtype::F32),
        Just(Dtype::Bf16),
        Just(Dtype::F16),
        Just(Dtype::I8)
    ]
}

/// Extra stride over `cols`: `None` packed (0), else `cols + extra`.
fn any_gap() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![Just(None), Just(Some(0usize)), (1usize..40).prop_map(Some)]
}

proptest! {
    #![proptest_config(config(256))]

    /// Random layouts, widths (odd, 768 + 1, rows split over tasks), values (large offsets,
    /// NaN, infinities, subnormals, tiny rows with eps = 0) and types: fused = unfused, bit for
    /// bit, on every ISA and thread count.
    #[test]
    fn fused_rows_match_the_unfused_reference(
        rows in prop_oneof![Just(1usize), 1usize..6, 30usize..70],
        cols in prop_oneof![
            Just(1usize), 1usize..70, Just(768usize), Just(769usize), 1000usize..1040
        ],
        x in (any_type(), any_gap()),
        residual in proptest::option::of((any_type(), any_gap())),
        sum in proptest::option::of((any_type(), any_gap())),
        y in (any_y_type(), any_gap()),
        bias in any::<bool>(),
        centered in any::<bool>(),
        kinds in (0u8..4, 0u8..3),
        params in 0u8..3,
        seed in any::<u64>(),
    ) {
        let st = |gap: Option<usize>| gap.map_or(0, |e| cols + e);
        let mut g = Gen::new(seed);
        let c = make_case(
            &mut g,
            (rows, cols),
            centered,
            spec(x.0, st(x.1)),
            residual.map(|r| spec(r.0, st(r.1))),
            bias,
            sum.map(|s| spec(s.0, st(s.1))),
            spec(y.0, st(y.1)),
            kinds,
            params,
        );
        let inputs = (c.x.buf.all_bits(), c.residual.as_ref().map(|r| r.buf.all_bits()));
        check_everywhere(&c, &format!("{rows}x{cols}"));
        prop_assert!(inputs == (c.x.buf.all_bits(), c.residual.as_ref().map(|r| r.buf.all_bits())));
    }
}

// ---------------------------------------------------------------------------------------------
// Strides.

/// Rows 2^20 elements apart (3 rows, 1 row), one element wide and wider: elements between rows
/// untouched, results as packed.
#[test]
fn rows_far_apart() {
    let mut g = Gen::new(21);
    let far = 1 << 20;
    for (rows, cols) in [(3, 33), (3, 1), (1, 100), (2, 1029)] {
        let c = make_case(
            &mut g,
            (rows, cols),
            true,
            spec(Dtype::Bf16, far),
            Some(spec(Dtype::F32, far + 3)),
            true,
            Some(spec(Dtype::F16, far)),
            spec(Dtype::F32, far + 1),
            (1, 0),
            1,
        );
        let cx = ctx(2, Isa::best());
        let got = run(&cx, &c);
        check(&cx, &c, &got, &format!("{rows}x{cols} stride 2^20"));
        // The same rows packed give the same bits.
        let mut p = c.clone();
        p.x = Tensor::with(spec(Dtype::Bf16, 0), rows, cols, &c.x.wide());
        let r = c.residual.as_ref().unwrap();
        p.residual = Some(Tensor::with(spec(Dtype::F32, cols), rows, cols, &r.wide()));
        p.sum = Some(spec(Dtype::F16, 0));
        p.y = spec(Dtype::F32, 0);
        let packed = run(&cx, &p);
        let wide_bits = |t: &Tensor| f32_bits(&t.wide());
        assert!(
            wide_bits(&packed.y) == wide_bits(&got.y),
            "{rows}x{cols}: strided y differs from packed"
        );
        let (ps, gs) = (packed.sum.as_ref().unwrap(), got.sum.as_ref().unwrap());
        assert!(
            wide_bits(ps) == wide_bits(gs),
            "{rows}x{cols}: strided sum differs from packed"
        );
        assert!(f32_bits(&packed.inv) == f32_bits(&got.inv));
    }
}

/// Calls big enough for streaming stores (59 MB of tensors, more than a last-level cache of up to
/// 32 MiB and the L2 caches of 3 threads hold; runs of at least 1024): strided rows whose starts are not vector-aligned, the sum streamed
/// too; elements between rows untouched.
#[test]
fn streamed_strided_outputs() {
    let mut g = Gen::new(31);
    let (rows, cols) = (1024, 4100);
    let cx = ctx(3, Isa::best());
    for (sum, y) in [
        (spec(Dtype::F32, cols + 3), spec(Dtype::F32, cols + 5)),
        (spec(Dtype::F32, 0), spec(Dtype::F32, 0)),
    ] {
        let c = make_case(
            &mut g,
            (rows, cols),
            false,
            spec(Dtype::Bf16, cols + 7),
            Some(spec(Dtype::F32, 0)),
            true,
            Some(sum),
            y,
            (2, 0),
            1,
        );
        let got = run(&cx, &c);
        check(&cx, &c, &got, &format!("streaming sum {sum:?} y {y:?}"));
    }
}

/// Rows of 8 to 16 KiB, whose normalization prefetches the next row as it goes: every type `x`
/// and `y` can have on the straight path (packed, strided, the last row of a part and of the
/// tensor), and `y` over `x`; each equal to the reference and the same on 1, 2 and 3 threads.
#[test]
fn rows_that_prefetch_the_next_row() {
    let mut g = Gen::new(47);
    let mut k = 0;
    for (cols, xd, yd) in [
        (2048, Dtype::F32, Dtype::F32),
        (3001, Dtype::F32, Dtype::Bf16),
        (4096, Dtype::F32, Dtype::F32),
        (4096, Dtype::Bf16, Dtype::Bf16),
        (8192, Dtype::F16, Dtype::F16),
        (5000, Dtype::F32, Dtype::F16),
    ] {
        for (xs, ys) in [(0, 0), (cols + 5, cols + 16)] {
            k += 1;
            let c = make_case(
                &mut g,
                (7, cols),
                k % 2 == 0,
                spec(xd, xs),
                None,
                false,
                None,
                spec(yd, ys),
                ((k % 3) as u8, 0),
                (k % 3) as u8,
            );
            check_everywhere(&c, &format!("{cols} {xd:?} -> {yd:?} strides {xs}, {ys}"));
        }
        if xd == yd {
            let cx = ctx(2, Isa::best());
            let c = in_place_case(
                &mut g,
                (5, cols),
                Over::YX,
                spec(xd, 0),
                spec(xd, 0),
                yd,
                true,
                false,
            );
            let want = run(&cx, &c);
            check(&cx, &c, &want, &format!("{cols} {xd:?} out of place"));
            let (x, _, _) = run_in_place(&cx, &c, Over::YX);
            assert!(
                x.buf.all_bits() == overwritten(&c.x, &want.y),
                "{cols} {xd:?} in place"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Int8 output.

/// A layer norm case whose output `v` is exactly `beta` (gamma all zeros, ordinary rows), so
/// that the quantizer's input is chosen by the test; rows as given (`x` f32).
fn beta_case(rows: usize, beta: &[f32], x: Dtype, y_stride: usize) -> Case {
    let cols = beta.len();
    let mut g = Gen::new(cols as u64);
    Case {
        rows,
        cols,
        centered: true,
        x: Tensor::with(spec(x, 0), rows, cols, &g.normals(rows * cols, 3.0, 2.0)),
        residual: None,
        bias: None,
        sum: None,
        y: spec(Dtype::I8, y_stride),
        gamma: Some(vec![0.0; cols]),
        beta: Some(beta.to_vec()),
        eps: 1e-5,
    }
}

/// The i8 rows of an output.
fn i8_rows(o: &Out) -> Vec<Vec<i8>> {
    (0..o.y.rows)
        .map(|r| {
            (0..o.y.cols)
                .map(|j| o.y.buf.bits(o.y.at(r, j)) as u8 as i8)
                .collect()
        })
        .collect()
}

/// Quantization with values chosen exactly: ties to even (both signs, at 0.5, 1.5, 2.5, 126.5),
/// values exactly +-amax to +-127, an inexact `127 / amax`, and `amax` so small that `127 /
/// amax` overflows (subnormal values, ties there too); every ISA and input type, packed and
/// strided.
#[test]
fn i8_ties_extremes_and_tiny_scales() {
    let t = |k: f32| k * f32::from_bits(1 << 19); // k * 2^-130 (a subnormal unit), exact
    let tiny = t(127.0); // 127 / tiny = 2^130 overflows
    let cases: Vec<(Vec<f32>, Vec<i8>, f32)> = vec![
        // amax 127: 127 / amax = 1, v itself rounded.
        (
            vec![
                0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.0, -127.0, 3.49, -0.0, 64.5,
            ],
            vec![0, 2, 2, 0, -2, -2, 126, -126, 127, -127, 3, 0, 64],
            1.0,
        ),
        // amax 254: 127 / amax = 0.5.
        (
            vec![1.0, 3.0, 5.0, -7.0, 254.0, -254.0, 253.0, 0.0, 9.0],
            vec![0, 2, 2, -4, 127, -127, 126, 0, 4],
            2.0,
        ),
        // amax 3: 127 / 3 inexact, yet +-amax gives +-127; -1.5 * f32(127 / 3) rounds to -63.5.
        (
            vec![3.0, -3.0, 1.0, 0.0, -1.5],
            vec![127, -127, 42, 0, -64],
            3.0 / 127.0,
        ),
        // amax 127 * 2^-130: the product formed as (v * 2^32) * (127 / (amax * 2^32)).
        (
            vec![
                tiny,
                -tiny,
                t(0.5),
                t(1.5),
                t(2.5),
                t(-2.5),
                t(3.5),
                t(126.5),
                0.0,
            ],
            vec![127, -127, 0, 2, 2, -2, 4, 126, 0],
            tiny / 127.0,
        ),
        // The smallest subnormal alone.
        (
            vec![f32::from_bits(1), 0.0, -0.0],
            vec![127, 0, 0],
            f32::from_bits(1) / 127.0,
        ),
    ];
    for (beta, want, scale) in &cases {
        assert_eq!(
            quantize(beta),
            (want.clone(), *scale),
            "the test's quantizer on {beta:?}"
        );
        for x in TYPES {
            for y_stride in [0, beta.len() + 3] {
                let c = beta_case(3, beta, x, y_stride);
                for isa in Isa::supported() {
                    let got = run(&ctx(1, isa), &c);
                    let what = format!("{beta:?} {x:?} {isa:?} stride {y_stride}");
                    for (r, row) in i8_rows(&got).iter().enumerate() {
                        assert_eq!(row, want, "{what}: row {r}");
                    }
                    for s in got.scale.as_ref().unwrap() {
                        assert_eq!(s.to_bits(), scale.to_bits(), "{what}: scale");
                    }
                    check(&ctx(1, isa), &c, &got, &what);
                }
            }
        }
    }
}

/// Rows whose output is all zero (scale 0, zeros), has an infinity (an overflowing `xhat *
/// gamma`) or a NaN (from a NaN or +inf input, or a zero spread with eps = 0): scale NaN and
/// zeros, the other rows quantized as usual. Layer and RMS norm, through the straight path (x of
/// any type) and the staged one (with a residual), every ISA.
#[test]
fn i8_rows_of_zeros_nan_and_infinity() {
    let cols = 4;
    // Gamma 2e38, eps 0. RMS norm: row 0 has xhat 1 (v = 2e38, all 127); row 1 xhat [2, 0, 0, 0]
    // (v = [inf, 0, 0, 0]). Layer norm: row 0 has a zero spread (NaN); row 1 xhat 1.73 (inf).
    // Both: row 2 zero spread (NaN), row 3 a NaN, row 4 +inf (NaN), row 5 xhat +-1 (+-127).
    #[rustfmt::skip]
    let x = [
        1.0, 1.0, 1.0, 1.0,
        1.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
        1.0, f32::NAN, 1.0, 1.0,
        f32::INFINITY, 1.0, 1.0, 1.0,
        1.0, -1.0, 1.0, -1.0,
    ];
    let rows = x.len() / cols;
    let scale = 2.0e38f32 / 127.0;
    for xd in TYPES {
        for residual in [false, true] {
            for centered in [false, true] {
                let c = Case {
                    rows,
                    cols,
                    centered,
                    x: Tensor::with(spec(xd, 0), rows, cols, &x),
                    residual: residual
                        .then(|| Tensor::with(spec(Dtype::F32, 5), rows, cols, &[0.0; 24])),
                    bias: None,
                    sum: None,
                    y: spec(Dtype::I8, 0),
                    gamma: Some(vec![2.0e38; cols]),
                    beta: None,
                    eps: 0.0,
                };
                for isa in Isa::supported() {
                    let got = run(&ctx(1, isa), &c);
                    let what = format!("x {xd:?} residual {residual} centered {centered} {isa:?}");
                    let q = i8_rows(&got);
                    let s = got.scale.as_ref().unwrap();
                    let nan_rows: &[usize] = if centered {
                        &[0, 1, 2, 3, 4]
                    } else {
                        &[1, 2, 3, 4]
                    };
                    for &r in nan_rows {
                        assert!(s[r].is_nan(), "{what}: row {r} scale {}", s[r]);
                        assert_eq!(q[r], vec![0; cols], "{what}: row {r}");
                    }
                    if !centered {
                        assert_eq!(q[0], vec![127; cols], "{what}: row 0");
                        assert_eq!(s[0].to_bits(), scale.to_bits(), "{what}: row 0 scale");
                    }
                    assert_eq!(q[5], vec![127, -127, 127, -127], "{what}: row 5");
                    assert_eq!(s[5].to_bits(), scale.to_bits(), "{what}: row 5 scale");
                    check(&ctx(1, isa), &c, &got, &what);
                }
            }
        }
    }
    // All-zero outputs with a finite spread (zeros in, no gamma or beta, eps > 0): xhat 0, so
    // scale +0.0 and zeros.
    for centered in [true, false] {
        let mut c = beta_case(2, &[0.0; 9], Dtype::F32, 0);
        c.gamma = None;
        c.beta = None;
        c.centered = centered;
        c.x = Tensor::with(spec(Dtype::F16, 11), 2, 9, &[0.0; 18]);
        for isa in Isa::supported() {
            let got = run(&ctx(1, isa), &c);
            let s = got.scale.as_ref().unwrap();
            assert!(s.iter().all(|s| s.to_bits() == 0), "scales {s:?}");
            assert_eq!(i8_rows(&got), vec![vec![0i8; 9]; 2]);
            check(&ctx(1, isa), &c, &got, "zero rows");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// In place.

/// How outputs replace inputs.
#[derive(Clone, Copy, Debug)]
enum Over {
    /// `y` over `x`.
    YX,
    /// `sum` over `residual`.
    SumRes,
    /// `sum` over `x`.
    SumX,
    /// `y` over `x` and `sum` over `residual` (fused add + RMS norm of LLM engines).
    Both,
}
const OVERS: [Over; 4] = [Over::YX, Over::SumRes, Over::SumX, Over::Both];

/// The out-of-place case an in-place call must equal: the replaced tensor's type and stride.
/// With `extras`, a residual and a bias (the staged path); without, a residual only where an
/// output replaces it (y over x alone then takes the straight path, x normalized in place).
#[allow(clippy::too_many_arguments)]
fn in_place_case(
    g: &mut Gen,
    (rows, cols): (usize, usize),
    over: Over,
    xs: Spec,
    rs: Spec,
    yd: Dtype,
    centered: bool,
    extras: bool,
) -> Case {
    let (sum, y) = match over {
        Over::YX => (None, xs),
        Over::SumRes => (Some(rs), spec(yd, 0)),
        Over::SumX => (Some(xs), spec(yd, cols + 2)),
        Over::Both => (Some(rs), xs),
    };
    let residual = extras || matches!(over, Over::SumRes | Over::Both);
    make_case(
        g,
        (rows, cols),
        centered,
        xs,
        residual.then_some(rs),
        extras,
        sum,
        y,
        (2, 1),
        1,
    )
}

/// `c` with the outputs over the inputs as `over` says; returns x and residual after the call
/// and the outputs not over an input.
fn run_in_place(cx: &Context, c: &Case, over: Over) -> (Tensor, Option<Tensor>, Out) {
    let mut x = c.x.clone();
    let mut res = c.residual.clone();
    let mut o = Out::new(c);
    let xs = x.stride;
    let x_in = match over {
        Over::SumRes => RowInput::Read(x.buf.rows(xs)),
        _ => RowInput::Write(x.buf.rows_mut(xs)),
    };
    let res_in = res.as_mut().map(|r| {
        let rs = r.stride;
        match over {
            Over::SumRes | Over::Both => RowInput::Write(r.buf.rows_mut(rs)),
            _ => RowInput::Read(r.buf.rows(rs)),
        }
    });
    let y = match over {
        Over::YX | Over::Both => RowTarget::X,
        _ => RowTarget::Into(o.y.buf.rows_mut(o.y.stride)),
    };
    let mut io = RowNormIo::new(x_in, y);
    if let Some(r) = res_in {
        io = io.residual(r);
    }
    if let Some(b) = &c.bias {
        io = io.bias(b);
    }
    io = match over {
        Over::YX => io,
        Over::SumRes | Over::Both => io.sum(RowTarget::Residual),
        Over::SumX => io.sum(RowTarget::X),
    };
    if let Some(s) = &mut o.scale {
        io = io.y_scale(s);
    }
    call(cx, c, io, &mut o.mean, &mut o.inv).expect("a valid in-place call");
    (x, res, o)
}

/// `t` with the rows of `rows` copied in (what an in-place output leaves).
fn overwritten(t: &Tensor, rows: &Tensor) -> Vec<u32> {
    let mut b = t.buf.all_bits();
    for r in 0..t.rows {
        for j in 0..t.cols {
            b[t.at(r, j)] = rows.buf.bits(rows.at(r, j));
        }
    }
    b
}

/// y over x, sum over residual, sum over x, and y over x with sum over residual: bitwise the
/// out-of-place results, every element outside the rows as it was; strided and packed inputs
/// of every type, every ISA, 1 and 3 threads.
#[test]
fn in_place_is_out_of_place() {
    let mut g = Gen::new(41);
    for over in OVERS {
        for xd in TYPES {
            for rd in TYPES {
                for (k, yd) in Y_TYPES.into_iter().enumerate() {
                    let centered = k % 2 == 0;
                    let xs = spec(xd, [0, 40][k % 2]);
                    let rs = spec(rd, [41, 0][k % 2]);
                    let extras = k < 2;
                    let c = in_place_case(&mut g, (7, 37), over, xs, rs, yd, centered, extras);
                    for isa in Isa::supported() {
                        for threads in [1, 3] {
                            let cx = ctx(threads, isa);
                            let want = run(&cx, &c);
                            if threads == 1 {
                                check(&cx, &c, &want, &format!("{over:?} out of place"));
                            }
                            let (x, res, got) = run_in_place(&cx, &c, over);
                            let what = format!(
                                "{over:?} x={xd:?} residual={rd:?} y={yd:?} {isa:?} {threads}"
                            );
                            let sum = want.sum.as_ref();
                            let want_x = match over {
                                Over::YX | Over::Both => overwritten(&c.x, &want.y),
                                Over::SumX => overwritten(&c.x, sum.unwrap()),
                                Over::SumRes => c.x.buf.all_bits(),
                            };
                            assert!(x.buf.all_bits() == want_x, "{what}: x after the call");
                            let want_res = c.residual.as_ref().map(|r0| match over {
                                Over::SumRes | Over::Both => overwritten(r0, sum.unwrap()),
                                _ => r0.buf.all_bits(),
                            });
                            let res = res.map(|r| r.buf.all_bits());
                            assert!(res == want_res, "{what}: residual after");
                            if matches!(over, Over::SumRes | Over::SumX) {
                                let y = (got.y.buf.all_bits(), got.scale.as_deref().map(f32_bits));
                                let w =
                                    (want.y.buf.all_bits(), want.scale.as_deref().map(f32_bits));
                                assert!(y == w, "{what}: y");
                            }
                            assert!(
                                f32_bits(&got.mean) == f32_bits(&want.mean)
                                    && f32_bits(&got.inv) == f32_bits(&want.inv),
                                "{what}: statistics"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// In place with outputs big enough for streaming stores: y over packed f32 x alone (the
/// straight path, normalized in place) and the fused add + RMS norm (y over x, sum over the
/// residual), as out of place.
#[test]
fn streamed_in_place() {
    let mut g = Gen::new(43);
    let cx = ctx(3, Isa::best());
    for (over, extras, xs) in [
        (Over::YX, false, spec(Dtype::F32, 0)),
        (Over::Both, false, spec(Dtype::F32, 4103)),
        (Over::Both, true, spec(Dtype::F32, 0)),
    ] {
        let rs = spec(Dtype::F32, 0);
        let c = in_place_case(
            &mut g,
            (1024, 4100),
            over,
            xs,
            rs,
            Dtype::F32,
            false,
            extras,
        );
        let want = run(&cx, &c);
        check(&cx, &c, &want, &format!("{over:?} out of place"));
        let (x, res, _) = run_in_place(&cx, &c, over);
        assert!(
            x.buf.all_bits() == overwritten(&c.x, &want.y),
            "{over:?}: x"
        );
        if let (Some(r), Some(s)) = (res, want.sum.as_ref()) {
            let r0 = c.residual.as_ref().unwrap();
            assert!(r.buf.all_bits() == overwritten(r0, s), "{over:?}: residual");
        }
    }
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// The safe API's checks.

/// Lengths (shorter than the extent: BadShape; longer: fine), strides, types, the i8 scale,
/// outputs over inputs, overflow; nothing written on error.
#[test]
fn safe_api_errors() {
    let mut g = Gen::new(51);
    let (rows, cols) = (4, 9);
    let base = make_case(
        &mut g,
        (rows, cols),
        true,
        spec(Dtype::Bf16, 11),
        Some(spec(Dtype::F32, 0)),
        true,
        Some(spec(Dtype::F16, 10)),
        spec(Dtype::I8, 12),
        (0, 0),
        1,
    );
    let cx = ctx(1, Isa::best());
    // Everything about the call that an error case changes.
    #[derive(Clone, Copy, Debug)]
    enum Bad {
        ShortX,
        ShortResidual,
        ShortSum,
        ShortY,
        StrideBelowCols,
        HugeStride,
        NoScale,
        ScaleNotI8,
        ShortScale,
        Eps,
        ShortBias,
        ShortGamma,
        YOverReadX,
        SumOverReadX,
        SumOverReadResidual,
        YOverResidual,
        SumAndYOverX,
    }
    use Bad::*;
    let cases = [
        (ShortX, ErrorKind::BadShape),
        (ShortResidual, ErrorKind::BadShape),
        (ShortSum, ErrorKind::BadShape),
        (ShortY, ErrorKind::BadShape),
        (StrideBelowCols, ErrorKind::BadShape),
        (HugeStride, ErrorKind::Overflow),
        (NoScale, ErrorKind::BadArgument),
        (ScaleNotI8, ErrorKind::BadArgument),
        (ShortScale, ErrorKind::BadShape),
        (Eps, ErrorKind::BadArgument),
        (ShortBias, ErrorKind::BadShape),
        (ShortGamma, ErrorKind::BadShape),
        (YOverReadX, ErrorKind::BadArgument),
        (SumOverReadX, ErrorKind::BadArgument),
        (SumOverReadResidual, ErrorKind::BadArgument),
        (YOverResidual, ErrorKind::Alias),
        (SumAndYOverX, ErrorKind::Alias),
    ];
    for (bad, kind) in cases {
        let mut c = base.clone();
        let extent = |t: &Tensor| t.buf.len() - SLACK;
        let mut x = c.x.clone();
        let mut res = c.residual.clone().unwrap();
        let mut o = Out::new(&c);
        let mut y_f32 = Tensor::new(spec(Dtype::F32, 0), rows, cols);
        let mut scale = vec![f32::from_bits(STAT_SENTINEL); rows];
        let before = (x.buf.all_bits(), res.buf.all_bits());
        let (xs, rs) = (x.stride, res.stride);
        let (xn, rn) = (extent(&x), extent(&res));
        let (sn, yn) = (extent(o.sum.as_ref().unwrap()), extent(&o.y));
        match bad {
            Eps => c.eps = -1.0,
            ShortBias => c.bias.as_mut().unwrap().truncate(cols - 1),
            ShortGamma => c.gamma.as_mut().unwrap().truncate(cols - 1),
            _ => {}
        }
        let x_in = match bad {
            ShortX => RowInput::Read(short_rows(&x.buf, xs, xn - 1)),
            HugeStride => RowInput::Read(x.buf.rows(usize::MAX / 2)),
            StrideBelowCols => RowInput::Read(x.buf.rows(cols - 1)),
            SumAndYOverX => RowInput::Write(x.buf.rows_mut(xs)),
            _ => RowInput::Read(x.buf.rows(xs)),
        };
        let sum_t = o.sum.as_mut().unwrap();
        let sum = match bad {
            ShortSum => RowTarget::Into(short_rows_mut(&mut sum_t.buf, sum_t.stride, sn - 1)),
            SumOverReadX | SumAndYOverX => RowTarget::X,
            SumOverReadResidual => RowTarget::Residual,
            _ => RowTarget::Into(sum_t.buf.rows_mut(sum_t.stride)),
        };
        let y = match bad {
            ShortY => RowTarget::Into(short_rows_mut(&mut o.y.buf, o.y.stride, yn - 1)),
            YOverReadX | SumAndYOverX => RowTarget::X,
            YOverResidual => RowTarget::Residual,
            ScaleNotI8 => RowTarget::Into(y_f32.buf.rows_mut(0)),
            _ => RowTarget::Into(o.y.buf.rows_mut(o.y.stride)),
        };
        let res_in = match bad {
            ShortResidual => RowInput::Read(short_rows(&res.buf, rs, rn - 1)),
            YOverResidual => RowInput::Write(res.buf.rows_mut(rs)),
            _ => RowInput::Read(res.buf.rows(rs)),
        };
        let mut io = RowNormIo::new(x_in, y)
            .residual(res_in)
            .bias(c.bias.as_deref().unwrap())
            .sum(sum);
        match bad {
            NoScale | YOverReadX | YOverResidual | SumAndYOverX => {}
            ShortScale => io = io.y_scale(&mut scale[..rows - 1]),
            _ => io = io.y_scale(&mut scale),
        }
        let err = call(&cx, &c, io, &mut o.mean, &mut o.inv).expect_err(&format!("{bad:?}"));
        assert_eq!(err.kind(), kind, "{bad:?}: {}", err.message());
        // Nothing written.
        assert!(
            (x.buf.all_bits(), res.buf.all_bits()) == before,
            "{bad:?}: inputs"
        );
        let fresh = Out::new(&base);
        assert!(o.bits() == fresh.bits(), "{bad:?}: outputs written");
        assert!(
            scale.iter().all(|s| s.to_bits() == STAT_SENTINEL),
            "{bad:?}: scale"
        );
        assert!(
            y_f32.buf.all_bits() == Tensor::new(spec(Dtype::F32, 0), rows, cols).buf.all_bits()
        );
    }
    // Exactly the extent (no slack) is fine, as is any slack (the other tests).
    let mut o = Out::new(&base);
    let sum_t = o.sum.as_mut().unwrap();
    let (sn, yn) = (sum_t.buf.len() - SLACK, o.y.buf.len() - SLACK);
    let r = base.residual.as_ref().unwrap();
    let io = RowNormIo::new(
        short_rows(&base.x.buf, base.x.stride, base.x.buf.len() - SLACK),
        short_rows_mut(&mut o.y.buf, o.y.stride, yn),
    )
    .residual(short_rows(&r.buf, r.stride, r.buf.len() - SLACK))
    .bias(base.bias.as_deref().unwrap())
    .sum(short_rows_mut(&mut sum_t.buf, sum_t.stride, sn))
    .y_scale(o.scale.as_mut().unwrap());
    call(&cx, &base, io, &mut o.mean, &mut o.inv).expect("the exact extent");
    check(&cx, &base, &o, "exact extents");
}

/// Calls without elements (no rows, or rows of no columns) succeed on empty slices and write
/// no statistics (as the packed functions).
#[test]
fn empty_calls() {
    for (rows, cols) in [(0, 5), (3, 0), (0, 0)] {
        for centered in [true, false] {
            let c = Case {
                rows,
                cols,
                centered,
                x: Tensor::new(spec(Dtype::Bf16, 0), rows, cols),
                residual: Some(Tensor::new(spec(Dtype::F16, cols + 1), rows, cols)),
                bias: Some(vec![0.5; cols]),
                sum: Some(spec(Dtype::F32, 0)),
                y: spec(Dtype::I8, 0),
                gamma: Some(vec![1.0; cols]),
                beta: centered.then(|| vec![0.0; cols]),
                eps: 1e-5,
            };
            let got = run(&ctx(2, Isa::best()), &c);
            let what = format!("{rows}x{cols} centered {centered}");
            assert!(
                got.bits() == Out::new(&c).bits(),
                "{what}: something written"
            );
        }
    }
}

/// The first `n` elements of a buffer as rows.
fn short_rows(b: &Buf, stride: usize, n: usize) -> Rows<'_> {
    match b {
        Buf::F32(v) => Rows::new(&v[..n], stride),
        Buf::Bf16(v) => Rows::new(&v[..n], stride),
        Buf::F16(v) => Rows::new(&v[..n], stride),
        Buf::I8(_) => unreachable!(),
    }
}

fn short_rows_mut(b: &mut Buf, stride: usize, n: usize) -> RowsMut<'_> {
    match b {
        Buf::F32(v) => RowsMut::new(&mut v[..n], stride),
        Buf::Bf16(v) => RowsMut::new(&mut v[..n], stride),
        Buf::F16(v) => RowsMut::new(&mut v[..n], stride),
        Buf::I8(v) => RowsMut::new(&mut v[..n], stride),
    }
}

// ---------------------------------------------------------------------------------------------
// The C functions.

/// The arguments of a C row-norm call.
#[derive(Clone, Copy, Debug)]
struct CArgs {
    rows: usize,
    cols: usize,
    x: nk_rows,
    residual: nk_rows,
    bias: *const f32,
    sum: nk_rows,
    y: nk_rows,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    mean: *mut f32,
    inv: *mut f32,
    y_scale: *mut f32,
}

const ABSENT: nk_rows = nk_rows {
    data: null_mut(),
    dtype: 0,
    stride: 0,
};

fn nk(data: *mut c_void, dt: Dtype, stride: usize) -> nk_rows {
    nk_rows {
        data,
        dtype: c_dtype(dt),
        stride,
    }
}

/// `nk_layernorm_forward_rows` (`centered`) or `nk_rmsnorm_forward_rows` (without beta and mean)
/// on the default context.
///
/// # Safety
/// Valid pointers (or NULL / misplaced on purpose inside memory the caller owns).
unsafe fn c_call(centered: bool, a: CArgs) -> nk_status {
    // SAFETY: forwarded.
    unsafe {
        if centered {
            nk_layernorm_forward_rows(
                null_mut(),
                a.rows,
                a.cols,
                a.x,
                a.residual,
                a.bias,
                a.sum,
                a.y,
                a.gamma,
                a.beta,
                a.eps,
                a.mean,
                a.inv,
                a.y_scale,
            )
        } else {
            nk_rmsnorm_forward_rows(
                null_mut(),
                a.rows,
                a.cols,
                a.x,
                a.residual,
                a.bias,
                a.sum,
                a.y,
                a.gamma,
                a.eps,
                a.inv,
                a.y_scale,
            )
        }
    }
}

/// Fresh outputs for `c` and the C arguments of the call over them (`x`, `residual` given as
/// `xp`, `rp` or copies of the case's own).
struct CCall {
    x: Tensor,
    residual: Option<Tensor>,
    out: Out,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

impl CCall {
    fn new(c: &Case) -> CCall {
        CCall {
            x: c.x.clone(),
            residual: c.residual.clone(),
            out: Out::new(c),
            gamma: c.gamma.clone(),
            beta: c.beta.clone(),
            bias: c.bias.clone(),
        }
    }

    fn args(&mut self, c: &Case) -> CArgs {
        let opt = |v: &Option<Vec<f32>>| v.as_ref().map_or(null(), |v| v.as_ptr());
        let t = |t: &mut Tensor| nk(t.buf.ptr(), t.buf.dtype(), t.stride);
        CArgs {
            rows: c.rows,
            cols: c.cols,
            x: t(&mut self.x),
            residual: self.residual.as_mut().map_or(ABSENT, t),
            bias: opt(&self.bias),
            sum: self.out.sum.as_mut().map_or(ABSENT, t),
            y: t(&mut self.out.y),
            gamma: opt(&self.gamma),
            beta: opt(&self.beta),
            eps: c.eps,
            mean: self.out.mean.as_mut_ptr(),
            inv: self.out.inv.as_mut_ptr(),
            y_scale: self
                .out
                .scale
                .as_mut()
                .map_or(null_mut(), |s| s.as_mut_ptr()),
        }
    }
}

/// A case through C: the outputs.
fn c_run(c: &Case) -> Out {
    let mut cc = CCall::new(c);
    let a = cc.args(c);
    // SAFETY: every pointer is a live buffer of its extent.
    let st = unsafe { c_call(c.centered, a) };
    assert_eq!(st, NK_OK, "C call");
    cc.out
}

/// With packed f32 rows and nothing added, the row functions are bitwise
/// `nk_layernorm_forward` / `nk_rmsnorm_forward`; with bf16 or f16 `x` and `y`, bitwise the
/// `_bf16` / `_f16` twins. Special values, with and without gamma and beta, rows over tasks.
#[test]
fn packed_rows_are_the_plain_c_functions() {
    let mut g = Gen::new(61);
    for (rows, cols) in [(5, 37), (3, 1), (1, 768), (70, 600)] {
        for dt in TYPES {
            for params in 0..3 {
                for centered in [true, false] {
                    let c = make_case(
                        &mut g,
                        (rows, cols),
                        centered,
                        spec(dt, 0),
                        None,
                        false,
                        None,
                        spec(dt, 0),
                        (2, 0),
                        params,
                    );
                    let got = c_run(&c);
                    let n = rows * cols;
                    let mut y = Buf::sentinel(dt, n);
                    let mut x = c.x.buf.clone();
                    let mut mean = vec![f32::from_bits(STAT_SENTINEL); rows];
                    let mut inv = vec![f32::from_bits(STAT_SENTINEL); rows];
                    let opt = |v: &Option<Vec<f32>>| v.as_ref().map_or(null(), |v| v.as_ptr());
                    let (gm, bt) = (opt(&c.gamma), opt(&c.beta));
                    let (xp, yp) = (x.ptr().cast_const(), y.ptr());
                    let (mp, ip, e) = (mean.as_mut_ptr(), inv.as_mut_ptr(), c.eps);
                    let (xb, yb) = (xp.cast::<nk_bf16>(), yp.cast::<nk_bf16>());
                    let (xh, yh) = (xp.cast::<nk_f16>(), yp.cast::<nk_f16>());
                    let (xf, yf) = (xp.cast::<f32>(), yp.cast::<f32>());
                    let n0 = null_mut();
                    // SAFETY: buffers of the shape.
                    let st = unsafe {
                        match (dt, centered) {
                            (Dtype::F32, true) => {
                                nk_layernorm_forward(n0, rows, cols, xf, yf, gm, bt, e, mp, ip)
                            }
                            (Dtype::F32, false) => {
                                nk_rmsnorm_forward(n0, rows, cols, xf, yf, gm, e, ip)
                            }
                            (Dtype::Bf16, true) => {
                                nk_layernorm_forward_bf16(n0, rows, cols, xb, yb, gm, bt, e, mp, ip)
                            }
                            (Dtype::Bf16, false) => {
                                nk_rmsnorm_forward_bf16(n0, rows, cols, xb, yb, gm, e, ip)
                            }
                            (Dtype::F16, true) => {
                                nk_layernorm_forward_f16(n0, rows, cols, xh, yh, gm, bt, e, mp, ip)
                            }
                            (Dtype::F16, false) => {
                                nk_rmsnorm_forward_f16(n0, rows, cols, xh, yh, gm, e, ip)
                            }
                            _ => unreachable!(),
                        }
                    };
                    assert_eq!(st, NK_OK);
                    let what = format!("{dt:?} {rows}x{cols} params {params} centered {centered}");
                    assert!(got.y.buf.all_bits()[..n] == y.all_bits()[..], "{what}: y");
                    assert!(f32_bits(&got.mean) == f32_bits(&mean), "{what}: mean");
                    assert!(f32_bits(&got.inv) == f32_bits(&inv), "{what}: inv");
                    check(&ctx(1, Isa::best()), &c, &got, &what);
                }
            }
        }
    }
}

/// The C functions give the safe API's bits on every layout, and the in-place forms (y == x,
/// sum == residual, sum == x, both) the out-of-place bits.
#[test]
fn c_calls_are_the_safe_calls() {
    let mut g = Gen::new(71);
    for (k, yd) in Y_TYPES.into_iter().enumerate() {
        for centered in [true, false] {
            let c = make_case(
                &mut g,
                (6, 45),
                centered,
                spec(TYPES[k % 3], 50),
                Some(spec(TYPES[(k + 1) % 3], 0)),
                true,
                Some(spec(TYPES[(k + 2) % 3], 47)),
                spec(yd, 46),
                (2, 1),
                1,
            );
            let want = run(&ctx(1, Isa::best()), &c);
            let got = c_run(&c);
            assert!(
                got.bits() == want.bits(),
                "{yd:?} {centered}: C differs from Rust"
            );
            for over in OVERS {
                let xs = spec(TYPES[k % 3], [0, 48][k % 2]);
                let rs = spec(TYPES[(k + 1) % 3], [47, 0][k % 2]);
                let extras = (over as usize + k).is_multiple_of(2);
                let c = in_place_case(&mut g, (6, 45), over, xs, rs, yd, centered, extras);
                let want = run(&ctx(1, Isa::best()), &c);
                let (x, res, _) = run_in_place(&ctx(1, Isa::best()), &c, over);
                let mut cc = CCall::new(&c);
                let mut a = cc.args(&c);
                match over {
                    Over::YX => a.y = a.x,
                    Over::SumRes => a.sum = a.residual,
                    Over::SumX => a.sum = a.x,
                    Over::Both => (a.y, a.sum) = (a.x, a.residual),
                }
                // SAFETY: live buffers; the outputs replacing inputs are those inputs exactly.
                assert_eq!(unsafe { c_call(centered, a) }, NK_OK, "{over:?}");
                let what = format!("C {over:?} y {yd:?} centered {centered}");
                assert!(cc.x.buf.all_bits() == x.buf.all_bits(), "{what}: x");
                let bits = |r: &Option<Tensor>| r.as_ref().map(|r| r.buf.all_bits());
                assert!(bits(&cc.residual) == bits(&res), "{what}: residual");
                if matches!(over, Over::SumRes | Over::SumX) {
                    assert!(
                        cc.out.y.buf.all_bits() == want.y.buf.all_bits(),
                        "{what}: y"
                    );
                }
                assert!(f32_bits(&cc.out.inv) == f32_bits(&want.inv), "{what}: inv");
            }
        }
    }
}

const SLOT: usize = 2048;
const SLOTS: usize = 12;
const R: usize = 5;
const C: usize = 37;

/// Buffers of a C call: slots of an arena (see `common::arena`).
impl Arena {
    fn new_slots() -> Arena {
        Arena::new(SLOTS * SLOT)
    }

    fn slot(&mut self, k: usize) -> *mut u8 {
        assert!(k < SLOTS);
        self.at(k * SLOT)
    }

    /// A valid `R x C` call: x f32 with stride 40, residual bf16 packed, bias, sum f16 with
    /// stride 38, y f32 packed, gamma, beta, saved statistics; no scales.
    fn args(&mut self) -> CArgs {
        let s = |a: &mut Arena, k: usize| a.slot(k).cast::<c_void>();
        CArgs {
            rows: R,
            cols: C,
            x: nk(s(self, 0), Dtype::F32, 40),
            residual: nk(s(self, 1), Dtype::Bf16, 0),
            bias: self.slot(2).cast(),
            sum: nk(s(self, 3), Dtype::F16, 38),
            y: nk(s(self, 4), Dtype::F32, 0),
            gamma: self.slot(5).cast(),
            beta: self.slot(6).cast(),
            eps: 1e-5,
            mean: self.slot(7).cast(),
            inv: self.slot(8).cast(),
            y_scale: null_mut(),
        }
    }

    /// Slot 9, for the scales of an i8 `y`.
    fn scales(&mut self) -> *mut f32 {
        self.slot(9).cast()
    }
}

/// `p` moved by `bytes`.
fn moved<T>(p: *mut T, bytes: usize) -> *mut T {
    p.cast::<u8>().wrapping_add(bytes).cast()
}

/// The error contract of both C functions: each error alone, the order between them (NULL,
/// overflow, shape, argument, alignment, alias), and no byte of any buffer written on error;
/// then the overlaps the contract allows, and empty calls.
#[test]
fn c_error_contract() {
    let mut arena = Arena::new_slots();
    let good = arena.args();
    let scales = arena.scales();
    let mut i8y = good;
    i8y.y = nk(good.y.data, Dtype::I8, 0);
    i8y.y_scale = scales;
    let bad_dtype = |t: nk_rows, v: c_int| nk_rows { dtype: v, ..t };
    for centered in [true, false] {
        let mut cases: Vec<(CArgs, nk_status, &str)> = Vec::new();
        let mut add = |f: &dyn Fn(&mut CArgs), base: CArgs, want, name| {
            let mut a = base;
            f(&mut a);
            cases.push((a, want, name));
        };
        // NULL.
        add(
            &|a| a.x.data = null_mut(),
            good,
            NK_ERR_NULL_POINTER,
            "NULL x",
        );
        add(
            &|a| a.y.data = null_mut(),
            good,
            NK_ERR_NULL_POINTER,
            "NULL y",
        );
        add(
            &|a| a.y_scale = null_mut(),
            i8y,
            NK_ERR_NULL_POINTER,
            "i8 y, NULL y_scale",
        );
        // Overflow.
        add(
            &|a| a.rows = usize::MAX / 2,
            good,
            NK_ERR_OVERFLOW,
            "rows * cols",
        );
        add(
            &|a| a.x.stride = usize::MAX / 4,
            good,
            NK_ERR_OVERFLOW,
            "x extent",
        );
        add(
            &|a| a.residual.stride = usize::MAX / 4,
            good,
            NK_ERR_OVERFLOW,
            "residual extent",
        );
        add(
            &|a| a.sum.stride = usize::MAX / 4,
            good,
            NK_ERR_OVERFLOW,
            "sum extent",
        );
        add(
            &|a| a.y.stride = usize::MAX / 4,
            good,
            NK_ERR_OVERFLOW,
            "y extent",
        );
        add(
            &|a| a.x.stride = usize::MAX / 8,
            good,
            NK_ERR_OVERFLOW,
            "x extent in bytes",
        );
        // Shape.
        add(
            &|a| a.x.stride = C - 1,
            good,
            NK_ERR_BAD_SHAPE,
            "x stride < cols",
        );
        add(
            &|a| a.residual.stride = 1,
            good,
            NK_ERR_BAD_SHAPE,
            "residual stride < cols",
        );
        add(
            &|a| a.sum.stride = C - 1,
            good,
            NK_ERR_BAD_SHAPE,
            "sum stride < cols",
        );
        add(
            &|a| a.y.stride = 1,
            good,
            NK_ERR_BAD_SHAPE,
            "y stride < cols",
        );
        // Argument.
        add(&|a| a.eps = -1.0, good, NK_ERR_BAD_ARGUMENT, "eps < 0");
        add(&|a| a.eps = f32::NAN, good, NK_ERR_BAD_ARGUMENT, "eps NaN");
        add(
            &|a| a.eps = f32::INFINITY,
            good,
            NK_ERR_BAD_ARGUMENT,
            "eps inf",
        );
        add(
            &|a| a.x = bad_dtype(a.x, 7),
            good,
            NK_ERR_BAD_ARGUMENT,
            "x dtype 7",
        );
        add(
            &|a| a.x = bad_dtype(a.x, -1),
            good,
            NK_ERR_BAD_ARGUMENT,
            "x dtype -1",
        );
        add(
            &|a| a.residual = bad_dtype(a.residual, 7),
            good,
            NK_ERR_BAD_ARGUMENT,
            "residual dtype 7",
        );
        add(
            &|a| a.sum = bad_dtype(a.sum, 4),
            good,
            NK_ERR_BAD_ARGUMENT,
            "sum dtype 4",
        );
        add(
            &|a| a.y = bad_dtype(a.y, 7),
            good,
            NK_ERR_BAD_ARGUMENT,
            "y dtype 7",
        );
        add(
            &|a| a.x = bad_dtype(a.x, 3),
            good,
            NK_ERR_BAD_ARGUMENT,
            "i8 x",
        );
        add(
            &|a| a.residual = bad_dtype(a.residual, 3),
            good,
            NK_ERR_BAD_ARGUMENT,
            "i8 residual",
        );
        add(
            &|a| a.sum = bad_dtype(a.sum, 3),
            good,
            NK_ERR_BAD_ARGUMENT,
            "i8 sum",
        );
        add(
            &|a| a.y_scale = scales,
            good,
            NK_ERR_BAD_ARGUMENT,
            "y_scale with f32 y",
        );
        // Alignment.
        add(
            &|a| a.x.data = moved(a.x.data, 1),
            good,
            NK_ERR_MISALIGNED,
            "odd f32 x",
        );
        add(
            &|a| a.x.data = moved(a.x.data, 2),
            good,
            NK_ERR_MISALIGNED,
            "f32 x at 2 bytes",
        );
        add(
            &|a| a.residual.data = moved(a.residual.data, 1),
            good,
            NK_ERR_MISALIGNED,
            "odd bf16 residual",
        );
        add(
            &|a| a.sum.data = moved(a.sum.data, 1),
            good,
            NK_ERR_MISALIGNED,
            "odd f16 sum",
        );
        add(
            &|a| a.y.data = moved(a.y.data, 2),
            good,
            NK_ERR_MISALIGNED,
            "f32 y at 2 bytes",
        );
        add(
            &|a| a.x = nk(moved(a.x.data, 1), Dtype::Bf16, 40),
            good,
            NK_ERR_MISALIGNED,
            "odd bf16 x",
        );
        add(
            &|a| a.bias = moved(a.bias.cast_mut(), 2),
            good,
            NK_ERR_MISALIGNED,
            "bias",
        );
        add(
            &|a| a.gamma = moved(a.gamma.cast_mut(), 2),
            good,
            NK_ERR_MISALIGNED,
            "gamma",
        );
        add(
            &|a| a.inv = moved(a.inv, 2),
            good,
            NK_ERR_MISALIGNED,
            "save_inv",
        );
        add(
            &|a| a.y_scale = moved(a.y_scale, 2),
            i8y,
            NK_ERR_MISALIGNED,
            "y_scale",
        );
        // Alias.
        add(
            &|a| a.y.data = moved(a.x.data, 4),
            good,
            NK_ERR_ALIAS,
            "y one element into x",
        );
        add(
            &|a| a.y = nk(a.x.data, Dtype::Bf16, 40),
            good,
            NK_ERR_ALIAS,
            "y over x, another dtype",
        );
        add(
            &|a| a.y = nk(a.x.data, Dtype::F32, 41),
            good,
            NK_ERR_ALIAS,
            "y over x, another stride",
        );
        add(
            &|a| a.y = nk(a.x.data, Dtype::F32, 0),
            good,
            NK_ERR_ALIAS,
            "y over x, packed vs 40",
        );
        add(
            &|a| {
                a.x.stride = 80;
                a.y = nk(moved(a.x.data, 4 * 40), Dtype::F32, 80)
            },
            good,
            NK_ERR_ALIAS,
            "y rows in x's gaps",
        );
        add(&|a| a.y = a.residual, good, NK_ERR_ALIAS, "y == residual");
        add(&|a| a.sum = a.y, good, NK_ERR_ALIAS, "sum == y");
        add(
            &|a| a.sum.data = moved(a.y.data, 8),
            good,
            NK_ERR_ALIAS,
            "sum into y",
        );
        add(
            &|a| a.sum = nk(moved(a.residual.data, 2), Dtype::Bf16, 0),
            good,
            NK_ERR_ALIAS,
            "sum one element into residual",
        );
        add(
            &|a| a.sum = nk(a.residual.data, Dtype::F16, 0),
            good,
            NK_ERR_ALIAS,
            "sum over residual, another dtype",
        );
        add(
            &|a| (a.residual, a.sum) = (a.x, a.x),
            good,
            NK_ERR_ALIAS,
            "sum == x == residual",
        );
        add(
            &|a| (a.y, a.sum) = (a.x, a.x),
            good,
            NK_ERR_ALIAS,
            "sum == y == x",
        );
        add(
            &|a| a.mean = a.x.data.cast(),
            good,
            NK_ERR_ALIAS,
            "save_mean over x",
        );
        add(
            &|a| a.inv = a.y.data.cast(),
            good,
            NK_ERR_ALIAS,
            "save_inv over y",
        );
        add(
            &|a| a.inv = moved(a.sum.data, 4).cast(),
            good,
            NK_ERR_ALIAS,
            "save_inv into sum",
        );
        add(
            &|a| a.y_scale = a.y.data.cast(),
            i8y,
            NK_ERR_ALIAS,
            "y_scale over y",
        );
        add(
            &|a| a.y_scale = moved(a.y.data, 100).cast(),
            i8y,
            NK_ERR_ALIAS,
            "y_scale into y",
        );
        add(
            &|a| a.y_scale = a.inv,
            i8y,
            NK_ERR_ALIAS,
            "y_scale == save_inv",
        );
        add(
            &|a| a.bias = a.sum.data.cast(),
            good,
            NK_ERR_ALIAS,
            "bias over sum",
        );
        add(
            &|a| a.gamma = moved(a.y.data, 40).cast(),
            good,
            NK_ERR_ALIAS,
            "gamma into y",
        );
        // Order.
        add(
            &|a| {
                a.x.data = null_mut();
                a.rows = usize::MAX / 2
            },
            good,
            NK_ERR_NULL_POINTER,
            "NULL x before overflow",
        );
        add(
            &|a| {
                a.y_scale = null_mut();
                a.x.stride = usize::MAX / 4
            },
            i8y,
            NK_ERR_NULL_POINTER,
            "NULL y_scale before overflow",
        );
        add(
            &|a| {
                a.x.stride = usize::MAX / 4;
                a.y.stride = 1
            },
            good,
            NK_ERR_OVERFLOW,
            "overflow before shape",
        );
        add(
            &|a| {
                a.y.stride = usize::MAX / 4;
                a.x.stride = 1
            },
            good,
            NK_ERR_OVERFLOW,
            "overflow of a later tensor before shape",
        );
        add(
            &|a| {
                a.sum.stride = 1;
                a.eps = -1.0
            },
            good,
            NK_ERR_BAD_SHAPE,
            "shape before eps",
        );
        add(
            &|a| {
                a.y.stride = 1;
                a.x = bad_dtype(a.x, 7)
            },
            good,
            NK_ERR_BAD_SHAPE,
            "shape before dtype",
        );
        add(
            &|a| {
                a.eps = -1.0;
                a.x.data = moved(a.x.data, 1)
            },
            good,
            NK_ERR_BAD_ARGUMENT,
            "eps before alignment",
        );
        add(
            &|a| {
                a.sum = bad_dtype(a.sum, 3);
                a.y = a.x
            },
            good,
            NK_ERR_BAD_ARGUMENT,
            "i8 sum before alias",
        );
        add(
            &|a| {
                a.y_scale = a.y.data.cast();
                a.x.data = moved(a.x.data, 1)
            },
            good,
            NK_ERR_BAD_ARGUMENT,
            "y_scale with f32 y before alignment",
        );
        add(
            &|a| a.y.data = moved(a.x.data, 1),
            good,
            NK_ERR_MISALIGNED,
            "odd y into x: alignment before alias",
        );
        for (a, want, name) in cases {
            if !centered && name.contains("save_mean") {
                continue; // RMS norm has no mean
            }
            let before = arena.bytes();
            // SAFETY: arena pointers, misplaced or NULL on purpose; errors are found before any
            // data is touched.
            let got = unsafe { c_call(centered, a) };
            assert_eq!(got, want, "centered {centered}: {name}");
            assert!(
                arena.bytes() == before,
                "centered {centered}: {name}: a byte changed on error"
            );
        }
        // Allowed: inputs over inputs, outputs exactly over the inputs they replace, i8 at any
        // address, and no data with NULL pointers.
        let mut ok: Vec<(CArgs, &str)> = Vec::new();
        let mut allow = |f: &dyn Fn(&mut CArgs), base: CArgs, name| {
            let mut a = base;
            f(&mut a);
            ok.push((a, name));
        };
        allow(&|_| {}, good, "good");
        allow(&|_| {}, i8y, "good i8");
        allow(&|a| a.residual = a.x, good, "residual == x");
        allow(
            &|a| (a.gamma, a.beta, a.bias) = (a.gamma, a.gamma, a.gamma),
            good,
            "gamma == beta == bias",
        );
        allow(&|a| a.y = a.x, good, "y == x");
        allow(&|a| a.sum = a.residual, good, "sum == residual");
        allow(&|a| a.sum = a.x, good, "sum == x");
        allow(
            &|a| (a.y, a.sum) = (a.x, a.residual),
            good,
            "y == x, sum == residual",
        );
        allow(
            &|a| (a.residual, a.sum, a.bias) = (ABSENT, ABSENT, null()),
            good,
            "x and y only",
        );
        allow(
            &|a| (a.gamma, a.beta, a.mean, a.inv) = (null(), null(), null_mut(), null_mut()),
            good,
            "no parameters or statistics",
        );
        allow(&|a| a.y.data = moved(a.y.data, 1), i8y, "odd i8 y");
        allow(
            &|a| {
                (a.rows, a.x, a.y, a.y_scale) =
                    (0, ABSENT, nk(null_mut(), Dtype::I8, 0), null_mut())
            },
            i8y,
            "no rows",
        );
        allow(
            &|a| {
                (
                    a.cols,
                    a.x.stride,
                    a.sum.stride,
                    a.x.data,
                    a.y.data,
                    a.y_scale,
                ) = (0, 0, 0, null_mut(), null_mut(), null_mut())
            },
            i8y,
            "no columns",
        );
        for (a, name) in ok {
            // SAFETY: arena pointers of valid extents.
            assert_eq!(
                unsafe { c_call(centered, a) },
                NK_OK,
                "centered {centered}: {name}"
            );
        }
    }
}
