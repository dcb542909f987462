//! Drives the row-normalization C entry points (layer norm and RMS norm forward and backward,
//! weight standardization) with arbitrary row and column counts, `eps` (NaN, inf, negative,
//! huge), NULL optional and required pointers, pointers misaligned by a few bytes, in place and
//! overlapping buffers, and sizes that overflow.
//!
//! Asserts: no crash or sanitizer report; the status is exactly the contract's (error
//! precedence NULL, OVERFLOW, BAD_SHAPE, BAD_ARGUMENT, MISALIGNED, ALIAS); on error every byte
//! is unchanged; on success only output bytes changed and every output (data, saved statistics,
//! gradients) agrees with a float64 loop written here (skipped where inputs are not finite or
//! near float32 overflow).
//!
//! Run: `cargo +nightly fuzz run layernorm_ffi -- -max_total_time=60` (from `fuzz/`).
#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use normkit::ffi::*;

const TOL: f64 = 1.0e-4;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let op = input.byte() % 5;
    let ctx = context(input.byte());
    let big = input.byte() % 8 == 0;
    let (mut rows, mut cols) = if big {
        (1 + input.size(199), 1 + usize::from(input.byte()))
    } else {
        (input.size(12), input.size(70))
    };
    let (buf_rows, buf_cols) = (rows, cols);
    let huge_call = input.byte() % 16 == 0;
    if huge_call {
        if input.bool() {
            rows = huge(&mut input)
        } else {
            cols = huge(&mut input)
        }
    }
    let wild = input.byte();
    let call = Rows {
        rows,
        cols,
        buf_rows,
        buf_cols,
        huge: huge_call,
    };
    match op {
        0 => forward(&mut input, &call, ctx, wild, true),
        1 => forward(&mut input, &call, ctx, wild, false),
        2 => backward(&mut input, &call, ctx, wild, true),
        3 => backward(&mut input, &call, ctx, wild, false),
        _ => standardize(&mut input, &call, ctx, wild),
    }
});

struct Rows {
    rows: usize,
    cols: usize,
    buf_rows: usize,
    buf_cols: usize,
    huge: bool,
}

impl Rows {
    fn n(&self) -> usize {
        self.buf_rows * self.buf_cols
    }
    /// Whether a huge call may succeed: no per-row or per-column array overflows and the tensor
    /// is empty.
    fn empty_ok(&self) -> bool {
        self.rows < (1 << 40) && self.cols < (1 << 40) && self.n() == 0
    }
}

/// Mean and biased variance of a row (`centered`), or 0 and mean of squares (RMS).
fn row_stats(row: &[f32], centered: bool) -> (f64, f64) {
    let k = row.len() as f64;
    let mean = if centered {
        row.iter().map(|&v| f64::from(v)).sum::<f64>() / k
    } else {
        0.0
    };
    (
        mean,
        row.iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / k,
    )
}

fn forward(input: &mut Input<'_>, call: &Rows, ctx: *mut nk_context, wild: u8, layer: bool) {
    let (n, rows, cols) = (call.n(), call.buf_rows, call.buf_cols);
    let mut a = Arena::default();
    let x = a.input("x", Kind::F32, n, Fill::Data);
    let gamma = a.opt_input("gamma", Kind::F32, cols, Fill::Data);
    let beta = if layer {
        a.opt_input("beta", Kind::F32, cols, Fill::Data)
    } else {
        usize::MAX
    };
    let y = a.output("y", Kind::F32, n);
    a.replaces(y, x);
    let save_mean = if layer {
        a.opt_output("save_mean", Kind::F32, rows)
    } else {
        usize::MAX
    };
    let save_inv = a.opt_output(
        if layer { "save_invstd" } else { "save_invrms" },
        Kind::F32,
        rows,
    );
    a.place(input, wild);
    a.build(input);
    let eps = input.scalar(1e-5);
    let (null, misaligned, alias) = a.pointer_errors();
    let status = unsafe {
        if layer {
            nk_layernorm_forward(
                ctx,
                call.rows,
                call.cols,
                a.ptr(x),
                a.ptr(y),
                a.ptr(gamma),
                a.ptr(beta),
                eps,
                a.ptr(save_mean),
                a.ptr(save_inv),
            )
        } else {
            nk_rmsnorm_forward(
                ctx,
                call.rows,
                call.cols,
                a.ptr(x),
                a.ptr(y),
                a.ptr(gamma),
                eps,
                a.ptr(save_inv),
            )
        }
    };
    let what = if layer {
        "layernorm_forward"
    } else {
        "rmsnorm_forward"
    };
    if call.huge {
        check_huge(&a, what, status, call.empty_ok());
        return;
    }
    if !check_status(
        &a,
        what,
        status,
        expected(null, false, false, bad_eps(eps), misaligned, alias),
    ) {
        return;
    }
    if cols == 0 {
        a.assert_unchanged("a forward without columns");
        return;
    }
    let (xs, g, b, ys) = (
        a.before_f32(x),
        a.before_f32(gamma),
        if layer { a.before_f32(beta) } else { vec![] },
        a.now_f32(y),
    );
    let (sm, si) = (
        if layer { a.now_f32(save_mean) } else { vec![] },
        a.now_f32(save_inv),
    );
    if !(sane32(&xs) && sane32(&g) && sane32(&b)) {
        return;
    }
    for r in 0..rows {
        let row = &xs[r * cols..(r + 1) * cols];
        let (mean, var) = row_stats(row, layer);
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        for j in 0..cols {
            let (gj, bj) = (
                g.get(j).map_or(1.0, |&v| f64::from(v)),
                b.get(j).map_or(0.0, |&v| f64::from(v)),
            );
            let xv = f64::from(row[j]);
            let want = (xv - mean) * inv * gj + bj;
            let mag = (xv.abs() + mean.abs() + var.sqrt()) * (inv * gj).abs() + bj.abs();
            assert_close(
                what,
                r * cols + j,
                f64::from(ys[r * cols + j]),
                want,
                mag,
                TOL,
            );
        }
        if !sm.is_empty() {
            assert_close(
                "save_mean",
                r,
                f64::from(sm[r]),
                mean,
                mean.abs() + var.sqrt(),
                1e-5,
            );
        }
        if !si.is_empty() {
            assert_close("save_inv", r, f64::from(si[r]), inv, inv, TOL);
        }
    }
}

fn backward(input: &mut Input<'_>, call: &Rows, ctx: *mut nk_context, wild: u8, layer: bool) {
    let (n, rows, cols) = (call.n(), call.buf_rows, call.buf_cols);
    let mut a = Arena::default();
    let x = a.input("x", Kind::F32, n, Fill::Data);
    let dy = a.input("dy", Kind::F32, n, Fill::Data);
    let gamma = a.opt_input("gamma", Kind::F32, cols, Fill::Data);
    let save_mean = if layer {
        a.input("save_mean", Kind::F32, rows, Fill::Data)
    } else {
        usize::MAX
    };
    let save_inv = a.input(
        if layer { "save_invstd" } else { "save_invrms" },
        Kind::F32,
        rows,
        Fill::Positive,
    );
    let dx = a.opt_output("dx", Kind::F32, n);
    a.replaces(dx, dy);
    let dgamma = a.opt_output("dgamma", Kind::F32, cols);
    let dbeta = if layer {
        a.opt_output("dbeta", Kind::F32, cols)
    } else {
        usize::MAX
    };
    a.place(input, wild);
    a.build(input);
    let (null, misaligned, alias) = a.pointer_errors();
    let status = unsafe {
        if layer {
            nk_layernorm_backward(
                ctx,
                call.rows,
                call.cols,
                a.ptr(x),
                a.ptr(dy),
                a.ptr(dx),
                a.ptr(gamma),
                a.ptr(save_mean),
                a.ptr(save_inv),
                a.ptr(dgamma),
                a.ptr(dbeta),
            )
        } else {
            nk_rmsnorm_backward(
                ctx,
                call.rows,
                call.cols,
                a.ptr(x),
                a.ptr(dy),
                a.ptr(dx),
                a.ptr(gamma),
                a.ptr(save_inv),
                a.ptr(dgamma),
            )
        }
    };
    let what = if layer {
        "layernorm_backward"
    } else {
        "rmsnorm_backward"
    };
    if call.huge {
        check_huge(&a, what, status, call.empty_ok());
        return;
    }
    if !check_status(
        &a,
        what,
        status,
        expected(null, false, false, false, misaligned, alias),
    ) {
        return;
    }
    let (xs, dys, g) = (a.before_f32(x), a.before_f32(dy), a.before_f32(gamma));
    let (m, s) = (
        if layer {
            a.before_f32(save_mean)
        } else {
            vec![0.0; rows]
        },
        a.before_f32(save_inv),
    );
    let (dx1, dg1, db1) = (
        a.now_f32(dx),
        a.now_f32(dgamma),
        if layer { a.now_f32(dbeta) } else { vec![] },
    );
    if !(sane32(&xs) && sane32(&dys) && sane32(&g) && sane32(&m) && sane32(&s)) {
        return;
    }
    let gamma_of = |j: usize| g.get(j).map_or(1.0, |&v| f64::from(v));
    let (mut dg, mut dgm, mut db, mut dbm) = (
        vec![0.0; cols],
        vec![0.0; cols],
        vec![0.0; cols],
        vec![0.0; cols],
    );
    for r in 0..rows {
        let (mr, sr) = (f64::from(m[r]), f64::from(s[r]));
        let k = cols as f64;
        let (mut sum_g, mut sum_gm, mut sum_gx, mut sum_gxm) = (0.0, 0.0, 0.0, 0.0);
        for j in 0..cols {
            let i = r * cols + j;
            let (xv, d) = (f64::from(xs[i]), f64::from(dys[i]));
            let gd = d * gamma_of(j);
            // Layer norm: xhat; RMS norm: x * r (its "xhat" with mean 0).
            let xhat = (xv - mr) * sr;
            let xmag = (xv.abs() + mr.abs()) * sr.abs();
            sum_g += gd;
            sum_gm += gd.abs();
            sum_gx += gd * xhat;
            sum_gxm += gd.abs() * xmag;
            dg[j] += d * xhat;
            dgm[j] += d.abs() * xmag;
            db[j] += d;
            dbm[j] += d.abs();
        }
        if dx1.is_empty() {
            continue;
        }
        for j in 0..cols {
            let i = r * cols + j;
            let (xv, d) = (f64::from(xs[i]), f64::from(dys[i]));
            let gd = d * gamma_of(j);
            let xhat = (xv - mr) * sr;
            let xmag = (xv.abs() + mr.abs()) * sr.abs();
            let (want, mag) = if layer {
                (
                    sr * (gd - sum_g / k - xhat * sum_gx / k),
                    sr.abs() * (gd.abs() + sum_gm / k + xmag * sum_gxm / k),
                )
            } else {
                (
                    sr * (gd - xhat * sum_gx / k),
                    sr.abs() * (gd.abs() + xmag * sum_gxm / k),
                )
            };
            assert_close(&format!("{what} dx"), i, f64::from(dx1[i]), want, mag, TOL);
        }
    }
    for j in 0..cols {
        if !dg1.is_empty() {
            assert_close("dgamma", j, f64::from(dg1[j]), dg[j], dgm[j], TOL);
        }
        if !db1.is_empty() {
            assert_close("dbeta", j, f64::from(db1[j]), db[j], dbm[j], TOL);
        }
    }
}

fn standardize(input: &mut Input<'_>, call: &Rows, ctx: *mut nk_context, wild: u8) {
    let (n, rows, cols) = (call.n(), call.buf_rows, call.buf_cols);
    let mut a = Arena::default();
    let w = a.input("w", Kind::F32, n, Fill::Data);
    let w_out = a.output("w_out", Kind::F32, n);
    a.replaces(w_out, w);
    a.place(input, wild);
    a.build(input);
    let eps = input.scalar(1e-5);
    let (null, misaligned, alias) = a.pointer_errors();
    let status =
        unsafe { nk_weight_standardize(ctx, call.rows, call.cols, a.ptr(w), a.ptr(w_out), eps) };
    if call.huge {
        check_huge(&a, "weight_standardize", status, call.empty_ok());
        return;
    }
    if !check_status(
        &a,
        "weight_standardize",
        status,
        expected(null, false, false, bad_eps(eps), misaligned, alias),
    ) {
        return;
    }
    let (xs, ys) = (a.before_f32(w), a.now_f32(w_out));
    if !sane32(&xs) {
        return;
    }
    for r in 0..rows {
        let row = &xs[r * cols..(r + 1) * cols];
        let (mean, var) = row_stats(row, true);
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        for j in 0..cols {
            let xv = f64::from(row[j]);
            let i = r * cols + j;
            assert_close(
                "weight_standardize",
                i,
                f64::from(ys[i]),
                (xv - mean) * inv,
                (xv.abs() + mean.abs() + var.sqrt()) * inv,
                TOL,
            );
        }
    }
}
