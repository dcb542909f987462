//! Drives the row norms of transformer engines (`nk_layernorm_forward_rows`,
//! `nk_rmsnorm_forward_rows`) through the C ABI: fuzzer-chosen rows and columns (rarely a size
//! beyond memory), per tensor a stride (0, `cols`, beyond `cols`, far beyond on a single row, so
//! large that the extent overflows, or invalid below `cols`) and a dtype (f32, bf16, f16, i8
//! where only `y` may take it, values outside the enum), the optional residual, bias, sum,
//! gamma, beta and saved statistics present or NULL, `y` in place on `x`, `sum` on `x` or on the
//! residual, other partial overlaps, misaligned pointers, `eps` (negative, NaN, inf), and data
//! with NaN, infinities, subnormals and raw bit patterns.
//!
//! Asserts: no crash or sanitizer report; the status is exactly the contract's (NULL, OVERFLOW,
//! BAD_SHAPE, BAD_ARGUMENT, MISALIGNED, ALIAS in that order; never NK_ERR_INTERNAL); on error no
//! byte of any buffer changed; on success only output bytes changed, elements between strided
//! rows did not, and the call is bitwise its unfused composition: `h = (x + residual) + bias`
//! formed in f32 here, rounded to the sum's dtype when a sum is given (and that is what the
//! sum holds), then `nk_layernorm_forward` / `nk_rmsnorm_forward` (f32, same context) on the
//! packed widened `h`, each output rounded to `y`'s type, or for an i8 `y` quantized per row by
//! the formula of the contract (`y_scale = amax / 127`, `nearbyint(v * (127 / amax))`, scale 0
//! for an all-zero row, NaN for a non-finite one); saved statistics bitwise the packed call's. A
//! NaN matches any NaN.
//!
//! Run: `cargo +nightly fuzz run rows_ffi -- -max_total_time=60` (from `fuzz/`).
#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use normkit::ffi::*;
use std::ffi::c_void;

/// The length of a buffer whose extent in the call is beyond memory (the call must fail first).
const CAP: usize = 16;

const F32: i32 = 0;
const BF16: i32 = 1;
const F16: i32 = 2;
const I8: i32 = 3;

/// A tensor's dtype value and stride, as passed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Spec {
    dtype: i32,
    stride: usize,
}

impl Spec {
    fn valid(self) -> bool {
        (F32..=I8).contains(&self.dtype)
    }
    /// Bytes per element (4 for a value outside the enum, as the library's size checks).
    fn bytes(self) -> usize {
        match self.dtype {
            BF16 | F16 => 2,
            I8 => 1,
            _ => 4,
        }
    }
    fn kind(self) -> Kind {
        match self.dtype {
            BF16 | F16 => Kind::U16,
            I8 => Kind::U8,
            _ => Kind::F32,
        }
    }
    fn stride(self, cols: usize) -> usize {
        if self.stride == 0 { cols } else { self.stride }
    }
    /// Elements spanned: `(rows - 1) * stride + cols`, 0 when empty; None on overflow.
    fn extent(self, rows: usize, cols: usize) -> Option<usize> {
        if rows == 0 || cols == 0 {
            return Some(0);
        }
        (rows - 1).checked_mul(self.stride(cols))?.checked_add(cols)
    }
    /// The extent, unless it overflows or exceeds the address space.
    fn extent_ok(self, rows: usize, cols: usize) -> Option<usize> {
        self.extent(rows, cols)
            .filter(|&e| e <= isize::MAX as usize / self.bytes())
    }
    /// The buffer length to allocate (CAP where the call must fail before touching it).
    fn len(self, rows: usize, cols: usize) -> usize {
        self.extent_ok(rows, cols)
            .filter(|&e| e <= 1 << 24)
            .unwrap_or(CAP)
    }
    fn widen(self, b: &[u8]) -> f32 {
        match self.dtype {
            BF16 => half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            _ => f32::from_le_bytes(b[..4].try_into().unwrap()),
        }
    }
    /// `v` rounded once to this (float) type: little-endian bytes, the first `bytes()` of
    /// them (no allocation per element: the large calls have 2^15 and more).
    fn narrow(self, v: f32) -> [u8; 4] {
        let two = |b: [u8; 2]| [b[0], b[1], 0, 0];
        match self.dtype {
            BF16 => two(half::bf16::from_f32(v).to_bits().to_le_bytes()),
            F16 => two(half::f16::from_f32(v).to_bits().to_le_bytes()),
            _ => v.to_le_bytes(),
        }
    }
    /// Whether two elements of this type are equal, any NaN matching any NaN.
    fn same(self, a: &[u8], b: &[u8]) -> bool {
        a == b || (self.widen(a).is_nan() && self.widen(b).is_nan())
    }
}

fn dtype_in(input: &mut Input<'_>) -> i32 {
    match input.byte() % 16 {
        0..=4 => F32,
        5..=9 => BF16,
        10..=13 => F16,
        14 => I8,
        _ => invalid_dtype(input),
    }
}

fn dtype_out(input: &mut Input<'_>) -> i32 {
    match input.byte() % 16 {
        0..=3 => F32,
        4..=7 => BF16,
        8..=10 => F16,
        11..=14 => I8,
        _ => invalid_dtype(input),
    }
}

fn invalid_dtype(input: &mut Input<'_>) -> i32 {
    match input.byte() % 4 {
        0 => 4,
        1 => -1,
        2 => i32::MAX,
        _ => i32::MIN,
    }
}

fn stride(input: &mut Input<'_>, rows: usize, cols: usize) -> usize {
    match input.byte() % 16 {
        0..=4 => 0,
        5..=7 => cols,
        8..=12 => cols + 1 + input.size(8),
        13 if cols >= 2 => 1 + input.size(255) % (cols - 1),
        14 if rows <= 1 => huge(input),
        14 => match input.byte() % 3 {
            0 => usize::MAX,
            1 => isize::MAX as usize + 1,
            _ => usize::MAX / 2 + 1 + input.size(255),
        },
        _ => 2 * cols + 3,
    }
}

/// One element's value of a data tensor, as bytes of its type (the first `spec.bytes()`).
fn element(input: &mut Input<'_>, spec: Spec, mode: u8, i: usize) -> [u8; 4] {
    let special = |input: &mut Input<'_>| match input.byte() % 8 {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 => f32::NEG_INFINITY,
        3 => -0.0,
        4 => f32::MIN_POSITIVE / 8.0,
        5 => 6.0e-8,
        6 => 3.0e38,
        _ => -1.0e-40,
    };
    match mode % 8 {
        // Raw bit patterns: NaN payloads, infinities, subnormals, any magnitude.
        7 => match spec.bytes() {
            2 => [input.byte(), input.byte(), 0, 0],
            _ => input.u32().to_le_bytes(),
        },
        // Mostly ordinary values, some special ones.
        6 => {
            let v = if input.byte().is_multiple_of(4) {
                special(input)
            } else {
                input.value(0, i)
            };
            spec.narrow(v)
        }
        // Subnormals of the type (bf16, f16) or tiny f32.
        5 if spec.bytes() == 2 => [input.byte(), input.byte() & 0x83, 0, 0],
        m => spec.narrow(input.value(m, i)),
    }
}

/// Fills a typed tensor: its rows from the fuzz input, the elements between rows with NaN (so
/// that reading them shows) or data.
fn fill(input: &mut Input<'_>, a: &mut Arena, b: Buf, spec: Spec, rows: usize, cols: usize) {
    if a.is_null(b) || !matches!(spec.dtype, F32 | BF16 | F16) {
        return;
    }
    let Some(len) = spec.extent_ok(rows, cols).filter(|&e| e <= 1 << 24) else {
        return;
    };
    let (mode, gaps_nan) = (input.byte(), input.bool());
    let stride = spec.stride(cols);
    let eb = spec.bytes();
    let mut bytes = Vec::with_capacity(len * eb);
    for e in 0..len {
        if e % stride >= cols && gaps_nan {
            bytes.extend_from_slice(&spec.narrow(f32::NAN)[..eb]);
        } else {
            bytes.extend_from_slice(&element(input, spec, mode, e)[..eb]);
        }
    }
    a.set_bytes(b, &bytes);
}

/// The contract's quantization of one row of float outputs: (scale, values).
fn quantize(v: &[f32]) -> (f32, Vec<i8>) {
    if v.iter().any(|x| !x.is_finite()) {
        return (f32::NAN, vec![0; v.len()]);
    }
    let amax = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if amax == 0.0 {
        return (0.0, vec![0; v.len()]);
    }
    let k = 127.0f32 / amax;
    let two32 = 4_294_967_296.0f32;
    let q = v
        .iter()
        .map(|&x| {
            let p = if k.is_finite() {
                x * k
            } else {
                (x * two32) * (127.0f32 / (amax * two32))
            };
            p.round_ties_even().clamp(-127.0, 127.0) as i8
        })
        .collect();
    (amax / 127.0, q)
}

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// A typed tensor of the call.
#[derive(Clone, Copy)]
struct Tensor {
    name: &'static str,
    buf: Buf,
    spec: Spec,
    /// Always passed (x, y) rather than optional.
    always: bool,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let layer = input.bool();
    let ctx = context(input.byte());
    let big = input.byte() % 128 == 37;
    let (mut rows, mut cols) = if big {
        // At least 2^15 elements: the parallel path.
        (64 + input.size(63), 512 + input.size(63))
    } else {
        (input.size(12), input.size(70))
    };

    // Types and strides; y and sum often take x's (or the residual's), for in place.
    let spec = |input: &mut Input<'_>, out: bool| Spec {
        dtype: if out {
            dtype_out(input)
        } else {
            dtype_in(input)
        },
        stride: stride(input, rows, cols),
    };
    let xs = spec(&mut input, false);
    // Sometimes the residual is x itself (inputs may overlap).
    let residual_is_x = input.byte().is_multiple_of(8);
    let rs = if residual_is_x {
        xs
    } else {
        spec(&mut input, false)
    };
    let ss = match input.byte() % 3 {
        0 => xs,
        1 => rs,
        _ => spec(&mut input, false),
    };
    let ys = if input.bool() {
        xs
    } else {
        spec(&mut input, true)
    };
    let sum_over_x = ss == xs && (ss != rs || input.bool());
    let stray_scale = ys.dtype != I8 && input.byte() % 32 == 0;

    let mut a = Arena::default();
    let x = a.input("x", xs.kind(), xs.len(rows, cols), Fill::Sentinel);
    let residual = a.opt_input("residual", rs.kind(), rs.len(rows, cols), Fill::Sentinel);
    if residual_is_x {
        a.replaces(residual, x);
    }
    let bias = a.opt_input("bias", Kind::F32, cols, Fill::Data);
    let gamma = a.opt_input("gamma", Kind::F32, cols, Fill::Data);
    let beta = layer.then(|| a.opt_input("beta", Kind::F32, cols, Fill::Data));
    let sum = a.opt_output("sum", ss.kind(), ss.len(rows, cols));
    a.replaces(sum, if sum_over_x { x } else { residual });
    let y = a.output("y", ys.kind(), ys.len(rows, cols));
    a.replaces(y, x);
    let save_mean = layer.then(|| a.opt_output("save_mean", Kind::F32, rows));
    let save_inv = a.opt_output("save_inv", Kind::F32, rows);
    // Required with an i8 y; rarely given with another y (an error).
    let y_scale = (ys.dtype == I8 || stray_scale).then(|| a.output("y_scale", Kind::F32, rows));
    let wild = if input.bool() { 0 } else { input.byte() % 64 };
    a.place(&mut input, wild);
    a.build(&mut input);
    fill(&mut input, &mut a, x, xs, rows, cols);
    fill(&mut input, &mut a, residual, rs, rows, cols);
    let eps = input.scalar(1e-5);

    // Rarely, a size beyond memory: the call must fail, or find the tensors empty.
    let huge_call = input.byte() % 32 == 17;
    if huge_call {
        if input.bool() {
            rows = huge(&mut input);
        } else {
            cols = huge(&mut input);
        }
    }

    let opt = |b: Option<Buf>| b.map_or(std::ptr::null_mut(), |b| a.ptr::<f32>(b));
    let pass = |t: &Tensor| nk_rows {
        data: a.ptr::<c_void>(t.buf),
        dtype: t.spec.dtype,
        stride: t.spec.stride,
    };
    let tensors = [
        Tensor {
            name: "x",
            buf: x,
            spec: xs,
            always: true,
        },
        Tensor {
            name: "residual",
            buf: residual,
            spec: rs,
            always: false,
        },
        Tensor {
            name: "sum",
            buf: sum,
            spec: ss,
            always: false,
        },
        Tensor {
            name: "y",
            buf: y,
            spec: ys,
            always: true,
        },
    ];
    let [tx, tr, ts, ty] = tensors;
    // SAFETY: every non-NULL pointer is valid for its extent (buffers are allocated at the
    // extents of the call's sizes, or the call fails before touching them).
    let status = unsafe {
        if layer {
            nk_layernorm_forward_rows(
                ctx,
                rows,
                cols,
                pass(&tx),
                pass(&tr),
                opt(Some(bias)),
                pass(&ts),
                pass(&ty),
                opt(Some(gamma)),
                opt(beta),
                eps,
                opt(save_mean),
                opt(Some(save_inv)),
                opt(y_scale),
            )
        } else {
            nk_rmsnorm_forward_rows(
                ctx,
                rows,
                cols,
                pass(&tx),
                pass(&tr),
                opt(Some(bias)),
                pass(&ts),
                pass(&ty),
                opt(Some(gamma)),
                eps,
                opt(Some(save_inv)),
                opt(y_scale),
            )
        }
    };
    let what = if layer {
        "nk_layernorm_forward_rows"
    } else {
        "nk_rmsnorm_forward_rows"
    };
    assert_ne!(status, nk_status::NK_ERR_INTERNAL, "{what}: a panic");
    if huge_call {
        if status == nk_status::NK_OK {
            assert!(
                rows == 0 || cols == 0,
                "{what}: a size beyond memory was accepted"
            );
        }
        a.assert_unchanged(what);
        return;
    }

    // The expected status, from the contract.
    let given = |t: &Tensor| t.always || !a.is_null(t.buf);
    let data = rows > 0 && cols > 0;
    let null = data
        && (a.is_null(x)
            || a.is_null(y)
            || (ys.dtype == I8 && y_scale.is_none_or(|b| a.is_null(b))));
    let overflow = tensors
        .iter()
        .any(|t| given(t) && t.spec.extent_ok(rows, cols).is_none());
    let shape = tensors
        .iter()
        .any(|t| given(t) && t.spec.stride != 0 && t.spec.stride < cols);
    let scale_given = y_scale.is_some_and(|b| !a.is_null(b));
    let argument = bad_eps(eps)
        || tensors.iter().any(|t| given(t) && !t.spec.valid())
        || tensors
            .iter()
            .any(|t| given(t) && t.spec.dtype == I8 && t.name != "y")
        || (scale_given && ys.dtype != I8);
    let f32_bufs = [
        Some(bias),
        Some(gamma),
        beta,
        save_mean,
        Some(save_inv),
        y_scale,
    ];
    let misaligned = tensors.iter().any(|t| {
        let p = a.ptr::<u8>(t.buf) as usize;
        given(t) && !p.is_multiple_of(t.spec.bytes())
    }) || f32_bufs
        .iter()
        .flatten()
        .any(|&b| !(a.ptr::<u8>(b) as usize).is_multiple_of(4));
    // Overlaps on extents: an output may be exactly (address, dtype, stride) the input it
    // replaces, y over x, sum over x or else over the residual.
    let exact = |p: &Tensor, q: &Tensor| {
        given(p)
            && given(q)
            && a.ptr::<u8>(p.buf) == a.ptr::<u8>(q.buf)
            && p.spec.dtype == q.spec.dtype
            && (p.spec.stride(cols) == q.spec.stride(cols) || rows <= 1)
    };
    let y_is_x = exact(&ty, &tx);
    let sum_is_x = exact(&ts, &tx);
    let sum_is_residual = exact(&ts, &tr);
    // (name, address, bytes, writes)
    let mut regions: Vec<(&str, usize, usize, bool)> = Vec::new();
    for t in &tensors {
        if given(t) && !a.is_null(t.buf) {
            let bytes = t.spec.extent_ok(rows, cols).unwrap_or(0) * t.spec.bytes();
            regions.push((
                t.name,
                a.ptr::<u8>(t.buf) as usize,
                bytes,
                t.name == "sum" || t.name == "y",
            ));
        }
    }
    let others = [
        ("bias", Some(bias), cols, false),
        ("gamma", Some(gamma), cols, false),
        ("beta", beta, cols, false),
        ("save_mean", save_mean, rows, true),
        ("save_inv", Some(save_inv), rows, true),
        ("y_scale", y_scale, rows, true),
    ];
    for (name, b, len, writes) in others {
        if let Some(b) = b.filter(|&b| !a.is_null(b)) {
            regions.push((name, a.ptr::<u8>(b) as usize, len * 4, writes));
        }
    }
    // `lenient`: also allows sum over x and the residual when x is exactly the residual (the
    // contract's "sum may be exactly x or exactly residual" read for both at once).
    let alias_with = |lenient: bool| {
        let mut alias = false;
        for (k, &(na, pa, la, wa)) in regions.iter().enumerate() {
            for &(nb, pb, lb, wb) in &regions[k + 1..] {
                if !(wa || wb) || la == 0 || lb == 0 || !(pa < pb + lb && pb < pa + la) {
                    continue;
                }
                let allowed = match (na, nb) {
                    ("x", "y") => y_is_x,
                    ("x", "sum") => sum_is_x,
                    ("residual", "sum") => sum_is_residual && (lenient || !sum_is_x),
                    _ => false,
                };
                alias |= !allowed;
            }
        }
        alias
    };
    let expect = expected(
        null,
        overflow,
        shape,
        argument,
        misaligned,
        alias_with(false),
    );
    let expect_lenient = expected(
        null,
        overflow,
        shape,
        argument,
        misaligned,
        alias_with(true),
    );
    assert!(
        status == expect || status == expect_lenient,
        "{what}: status {status:?}, expected {expect:?} (rows {rows}, cols {cols}, x {xs:?}, \
         residual {rs:?}, sum {ss:?}, y {ys:?}, eps {eps})"
    );
    if !check_status(&a, what, status, status) {
        return;
    }
    if !data {
        a.assert_unchanged(what);
        return;
    }

    // The unfused composition: h in f32, rounded to the sum's type, packed.
    let before = |t: &Tensor| a.before_bytes(t.buf);
    let elem = |t: &Tensor, bytes: &[u8], r: usize, j: usize| {
        let at = (r * t.spec.stride(cols) + j) * t.spec.bytes();
        t.spec.widen(&bytes[at..at + t.spec.bytes()])
    };
    let (xb, rb) = (before(&tx), (!a.is_null(residual)).then(|| before(&tr)));
    let bias_v = (!a.is_null(bias)).then(|| a.before_f32(bias));
    let mut h = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for j in 0..cols {
            let mut v = elem(&tx, &xb, r, j);
            if let Some(rb) = &rb {
                v += elem(&tr, rb, r, j);
            }
            if let Some(b) = &bias_v {
                v += b[j];
            }
            if !a.is_null(sum) {
                v = ss.widen(&ss.narrow(v));
            }
            h[r * cols + j] = v;
        }
    }
    let param = |b: Option<Buf>| b.filter(|&b| !a.is_null(b)).map(|b| a.before_f32(b));
    let (g, bt) = (param(Some(gamma)), param(beta));
    let ptr_of = |v: &Option<Vec<f32>>| v.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
    let mut yref = vec![0.0f32; rows * cols];
    let (mut mean_ref, mut inv_ref) = (vec![0.0f32; rows], vec![0.0f32; rows]);
    // SAFETY: every buffer has its length for the packed call.
    let st = unsafe {
        if layer {
            nk_layernorm_forward(
                ctx,
                rows,
                cols,
                h.as_ptr(),
                yref.as_mut_ptr(),
                ptr_of(&g),
                ptr_of(&bt),
                eps,
                mean_ref.as_mut_ptr(),
                inv_ref.as_mut_ptr(),
            )
        } else {
            nk_rmsnorm_forward(
                ctx,
                rows,
                cols,
                h.as_ptr(),
                yref.as_mut_ptr(),
                ptr_of(&g),
                eps,
                inv_ref.as_mut_ptr(),
            )
        }
    };
    assert_eq!(st, nk_status::NK_OK, "{what}: the packed call");

    // Outputs: each row's elements, and nothing between rows.
    let check_rows = |t: &Tensor, want: &dyn Fn(usize, usize) -> [u8; 4]| {
        let (now, was) = (a.now_bytes(t.buf), a.before_bytes(t.buf));
        let (stride, eb) = (t.spec.stride(cols), t.spec.bytes());
        let extent = t.spec.extent(rows, cols).unwrap();
        for e in 0..extent {
            let got = &now[e * eb..(e + 1) * eb];
            let (r, j) = (e / stride, e % stride);
            if j >= cols {
                assert_eq!(
                    got,
                    &was[e * eb..(e + 1) * eb],
                    "{what}: {} between rows",
                    t.name
                );
            } else {
                let w = &want(r, j)[..eb];
                let ok = if t.spec.dtype == I8 {
                    got == w
                } else {
                    t.spec.same(got, w)
                };
                assert!(ok, "{what}: {}[{r}][{j}]: got {got:?}, want {w:?}", t.name);
            }
        }
    };
    if !a.is_null(sum) {
        check_rows(&ts, &|r, j| ss.narrow(h[r * cols + j]));
    }
    if ys.dtype == I8 {
        let scales = a.now_f32(y_scale.unwrap());
        let mut q = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            let (scale, row) = quantize(&yref[r * cols..(r + 1) * cols]);
            assert!(
                same_f32(scales[r], scale),
                "{what}: y_scale[{r}]: got {}, want {scale}",
                scales[r]
            );
            q.extend(row);
        }
        check_rows(&ty, &|r, j| [q[r * cols + j] as u8, 0, 0, 0]);
    } else {
        check_rows(&ty, &|r, j| ys.narrow(yref[r * cols + j]));
    }
    let stats = [(save_mean, &mean_ref), (Some(save_inv), &inv_ref)];
    for (b, want) in stats {
        if let Some(b) = b.filter(|&b| !a.is_null(b)) {
            let got = a.now_f32(b);
            for r in 0..rows {
                assert!(
                    same_f32(got[r], want[r]),
                    "{what}: saved statistic [{r}]: got {}, want {}",
                    got[r],
                    want[r]
                );
            }
        }
    }
});
