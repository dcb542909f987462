//! Drives every batch-norm C entry point (training and inference forward, moments and their
//! merge, forward from moments, fold, backward, backward reduce and apply) with arbitrary sizes,
//! layouts (including values outside the enum), flags (including unknown bits), scalars (NaN,
//! inf, negative, huge), counts, NULL optional and required pointers, pointers misaligned by a
//! few bytes, in place and overlapping buffers, and sizes that overflow.
//!
//! Asserts: no crash or sanitizer report; the status is exactly the contract's (error
//! precedence NULL, OVERFLOW, BAD_SHAPE, BAD_ARGUMENT, MISALIGNED, ALIAS); on error every byte
//! of every buffer is unchanged; on success only output bytes changed and every output agrees
//! with a float64 loop written here (skipped where inputs are not finite or near float32
//! overflow).
//!
//! Run: `cargo +nightly fuzz run batchnorm_ffi -- -max_total_time=60` (from `fuzz/`).
#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use normkit::ffi::*;

const TOL: f64 = 1.0e-4;

struct Call {
    batch: usize,
    channels: usize,
    spatial: usize,
    layout: i32,
    /// A size beyond memory was given: only the error contract and memory safety are checked.
    huge: bool,
}

impl Call {
    fn shape(&self) -> nk_shape {
        nk_shape {
            batch: self.batch,
            channels: self.channels,
            spatial: self.spatial,
            layout: self.layout,
        }
    }
    fn dims(&self) -> (usize, usize, usize) {
        (self.batch, self.channels, self.spatial)
    }
    /// Element count, capped for the buffers of a huge call.
    fn n(&self) -> usize {
        if self.huge {
            16
        } else {
            self.batch * self.channels * self.spatial
        }
    }
    fn c(&self) -> usize {
        if self.huge {
            self.channels.min(16)
        } else {
            self.channels
        }
    }
    fn count(&self) -> usize {
        self.batch.saturating_mul(self.spatial)
    }
    /// Whether a huge call may succeed: its tensor is empty without overflowing a count.
    fn empty_ok(&self) -> bool {
        self.channels < (1 << 40) && (self.batch == 0 || self.spatial == 0)
    }
    fn bad_layout(&self) -> bool {
        !(0..=1).contains(&self.layout)
    }
    /// Values of channel `c`, as (index, value) pairs.
    fn channel(&self, c: usize) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.count());
        for n in 0..self.batch {
            for s in 0..self.spatial {
                v.push(index(self.layout, self.dims(), n, c, s));
            }
        }
        v
    }
}

fn gamma_or(g: &[f32], c: usize) -> f64 {
    g.get(c).map_or(1.0, |&v| f64::from(v))
}

fn beta_or(b: &[f32], c: usize) -> f64 {
    b.get(c).map_or(0.0, |&v| f64::from(v))
}

/// Mean and M2 of the given values, in two passes.
fn moments(v: impl Iterator<Item = f64> + Clone) -> (f64, f64, usize) {
    let (n, s) = v.clone().fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    if n == 0 {
        return (0.0, 0.0, 0);
    }
    let mean = s / n as f64;
    (mean, v.map(|x| (x - mean) * (x - mean)).sum(), n)
}

fn shape_of(input: &mut Input<'_>) -> Call {
    let big = input.byte() % 8 == 0;
    let mut call = Call {
        batch: input.size(4),
        channels: input.size(if big { 16 } else { 9 }),
        spatial: if big {
            1 + usize::from(input.byte()) * 3
        } else {
            input.size(40)
        },
        layout: input.layout(),
        huge: false,
    };
    if input.byte() % 16 == 0 {
        call.huge = true;
        match input.byte() % 3 {
            0 => call.batch = huge(input),
            1 => call.channels = huge(input),
            _ => call.spatial = huge(input),
        }
    }
    call
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let op = input.byte() % 9;
    let ctx = context(input.byte());
    let call = shape_of(&mut input);
    let wild = input.byte();
    match op {
        0 | 1 => forward(&mut input, &call, ctx, wild, op == 0),
        2 => moments_call(&mut input, &call, ctx, wild),
        3 => merge(&mut input, wild),
        4 => forward(&mut input, &call, ctx, wild, true),
        5 => fold(&mut input, wild),
        6 => backward(&mut input, &call, ctx, wild),
        7 => reduce(&mut input, &call, ctx, wild),
        _ => apply(&mut input, &call, ctx, wild),
    }
});

/// Training forward (own statistics, or global ones through `nk_batchnorm_forward_from_moments`
/// when `from_moments` is drawn) and inference forward.
fn forward(input: &mut Input<'_>, call: &Call, ctx: *mut nk_context, wild: u8, training: bool) {
    let from_moments = training && input.bool();
    let (n, c) = (call.n(), call.c());
    let mut a = Arena::default();
    let x = a.input("x", Kind::F32, n, Fill::Data);
    let gamma = a.opt_input("gamma", Kind::F32, c, Fill::Data);
    let beta = a.opt_input("beta", Kind::F32, c, Fill::Data);
    let kind = if from_moments { Kind::F64 } else { Kind::F32 };
    let (mean, var) = if training && !from_moments {
        (usize::MAX, usize::MAX)
    } else {
        (
            a.input("mean", kind, c, Fill::Data),
            a.input("var", kind, c, Fill::Positive),
        )
    };
    let y = a.output("y", Kind::F32, n);
    a.replaces(y, x);
    let (rm, rv, sm, si) = if training {
        (
            a.opt_inout("running_mean", Kind::F32, c, Fill::Data),
            a.opt_inout("running_var", Kind::F32, c, Fill::Positive),
            a.opt_output("save_mean", Kind::F32, c),
            a.opt_output("save_invstd", Kind::F32, c),
        )
    } else {
        (usize::MAX, usize::MAX, usize::MAX, usize::MAX)
    };
    a.place(input, wild);
    a.build(input);
    let eps = input.scalar(1e-5);
    let momentum = input.scalar(0.1);
    let flags = input.flags(if training {
        NK_BN_RUNNING_VAR_BIASED
    } else {
        NK_BN_FUSE_RELU
    });
    let local = call.count() as u64;
    let count = if from_moments {
        match input.byte() % 6 {
            0 => 0,
            1 => local.saturating_sub(1),
            2 => u64::from(input.u32()),
            3 => u64::MAX,
            _ => local.saturating_add(u64::from(input.byte() % 3)),
        }
    } else {
        local
    };
    let (mut null, misaligned, alias) = a.pointer_errors();
    let has_running = training && !a.is_null(rm) && !a.is_null(rv);
    if training {
        null |= a.is_null(rm) != a.is_null(rv);
    }
    let biased = flags & NK_BN_RUNNING_VAR_BIASED != 0;
    let bad_shape =
        training && (count < local || count < 1 || (has_running && !biased && count < 2));
    let bad_argument = call.bad_layout()
        || bad_eps(eps)
        || if training {
            flags & !NK_BN_RUNNING_VAR_BIASED != 0 || !(0.0..=1.0).contains(&momentum)
        } else {
            flags & !NK_BN_FUSE_RELU != 0
        };
    let status = unsafe {
        if from_moments {
            nk_batchnorm_forward_from_moments(
                ctx,
                call.shape(),
                a.ptr(x),
                a.ptr(y),
                a.ptr(gamma),
                a.ptr(beta),
                count,
                a.ptr(mean),
                a.ptr(var),
                eps,
                momentum,
                flags,
                a.ptr(rm),
                a.ptr(rv),
                a.ptr(sm),
                a.ptr(si),
            )
        } else if training {
            nk_batchnorm_forward_training(
                ctx,
                call.shape(),
                a.ptr(x),
                a.ptr(y),
                a.ptr(gamma),
                a.ptr(beta),
                eps,
                momentum,
                flags,
                a.ptr(rm),
                a.ptr(rv),
                a.ptr(sm),
                a.ptr(si),
            )
        } else {
            nk_batchnorm_forward_inference(
                ctx,
                call.shape(),
                a.ptr(x),
                a.ptr(y),
                a.ptr(gamma),
                a.ptr(beta),
                a.ptr(mean),
                a.ptr(var),
                eps,
                flags,
            )
        }
    };
    if call.huge {
        check_huge(&a, "huge shape", status, call.empty_ok());
        return;
    }
    let what = if from_moments {
        "forward_from_moments"
    } else if training {
        "forward_training"
    } else {
        "forward_inference"
    };
    let expect = expected(null, false, bad_shape, bad_argument, misaligned, alias);
    if !check_status(&a, what, status, expect) {
        return;
    }
    let xs = a.before_f32(x);
    let (g, b) = (a.before_f32(gamma), a.before_f32(beta));
    let ys = a.now_f32(y);
    let stats = |buf: Buf| {
        if kind == Kind::F64 {
            a.before_f64(buf)
        } else {
            a.before_f32(buf).into_iter().map(f64::from).collect()
        }
    };
    let (given_mean, given_var) = if mean == usize::MAX {
        (vec![], vec![])
    } else {
        (stats(mean), stats(var))
    };
    if !(sane32(&xs) && sane32(&g) && sane32(&b) && sane64(&given_mean) && sane64(&given_var)) {
        return;
    }
    let (rm0, rv0) = if has_running {
        (a.before_f32(rm), a.before_f32(rv))
    } else {
        (vec![], vec![])
    };
    let (rm1, rv1, sm1, si1) = if training {
        (a.now_f32(rm), a.now_f32(rv), a.now_f32(sm), a.now_f32(si))
    } else {
        (vec![], vec![], vec![], vec![])
    };
    for ch in 0..c {
        let idx = call.channel(ch);
        let (m, var, var_unbiased) = if !training {
            (given_mean[ch], given_var[ch], 0.0)
        } else if from_moments {
            let cnt = count as f64;
            let m2 = given_var[ch];
            // A negative M2 counts as 0 for both variances (NaN stays NaN).
            let unbiased = m2 / (cnt - 1.0);
            let unbiased = if unbiased < 0.0 { 0.0 } else { unbiased };
            (given_mean[ch], (m2 / cnt).max(0.0), unbiased)
        } else {
            let (m, m2, k) = moments(idx.iter().map(|&i| f64::from(xs[i])));
            (m, m2 / k as f64, m2 / (k as f64 - 1.0))
        };
        let invstd = 1.0 / (var + f64::from(eps)).sqrt();
        let scale = gamma_or(&g, ch) * invstd;
        for &i in &idx {
            let xv = f64::from(xs[i]);
            let mut want = (xv - m) * scale + beta_or(&b, ch);
            if !training && flags & NK_BN_FUSE_RELU != 0 {
                want = want.max(0.0);
            }
            let mag = (xv.abs() + m.abs() + var.abs().sqrt()) * scale.abs() + beta_or(&b, ch).abs();
            assert_close(&format!("{what} y"), i, f64::from(ys[i]), want, mag, TOL);
        }
        if training {
            if !sm1.is_empty() {
                assert_close(
                    "save_mean",
                    ch,
                    f64::from(sm1[ch]),
                    m,
                    m.abs() + var.sqrt(),
                    1e-5,
                );
            }
            if !si1.is_empty() {
                assert_close("save_invstd", ch, f64::from(si1[ch]), invstd, invstd, TOL);
            }
            if has_running {
                let mom = f64::from(momentum);
                let want_m = (1.0 - mom) * f64::from(rm0[ch]) + mom * m;
                let batch_var = if biased { var } else { var_unbiased };
                let want_v = (1.0 - mom) * f64::from(rv0[ch]) + mom * batch_var;
                let mag_m = f64::from(rm0[ch]).abs() + m.abs() + var.abs().sqrt();
                let mag_v = f64::from(rv0[ch]).abs() + batch_var.abs();
                assert_close("running_mean", ch, f64::from(rm1[ch]), want_m, mag_m, TOL);
                assert_close("running_var", ch, f64::from(rv1[ch]), want_v, mag_v, TOL);
            }
        }
    }
}

fn moments_call(input: &mut Input<'_>, call: &Call, ctx: *mut nk_context, wild: u8) {
    let (n, c) = (call.n(), call.c());
    let mut a = Arena::default();
    let x = a.input("x", Kind::F32, n, Fill::Data);
    let mean = a.output("mean", Kind::F64, c);
    let m2 = a.output("m2", Kind::F64, c);
    a.place(input, wild);
    a.build(input);
    let (null, misaligned, alias) = a.pointer_errors();
    let status = unsafe { nk_moments(ctx, call.shape(), a.ptr(x), a.ptr(mean), a.ptr(m2)) };
    if call.huge {
        check_huge(&a, "huge shape", status, call.empty_ok());
        return;
    }
    let expect = expected(null, false, false, call.bad_layout(), misaligned, alias);
    if !check_status(&a, "moments", status, expect) {
        return;
    }
    let xs = a.before_f32(x);
    let (means, m2s) = (a.now_f64(mean), a.now_f64(m2));
    if !sane32(&xs) {
        return;
    }
    for ch in 0..c {
        let idx = call.channel(ch);
        let (m, q, k) = moments(idx.iter().map(|&i| f64::from(xs[i])));
        let spread = idx
            .iter()
            .map(|&i| (f64::from(xs[i]) - m).abs())
            .fold(0.0, f64::max);
        assert_close(
            "moments mean",
            ch,
            means[ch],
            m,
            spread + m.abs() * 1e-3,
            1e-5,
        );
        let ulp = m.abs() * 1.2e-7;
        assert_close(
            "moments m2",
            ch,
            m2s[ch],
            q,
            q + k as f64 * (spread * ulp + ulp * ulp),
            TOL,
        );
    }
}

fn merge(input: &mut Input<'_>, wild: u8) {
    let channels = input.size(12);
    let mut a = Arena::default();
    let mean_b = a.input("mean_b", Kind::F64, channels, Fill::Data);
    let m2_b = a.input("m2_b", Kind::F64, channels, Fill::Positive);
    let mean_a = a.inout("mean_a", Kind::F64, channels, Fill::Data);
    let m2_a = a.inout("m2_a", Kind::F64, channels, Fill::Positive);
    a.place(input, wild);
    a.build(input);
    let count = |input: &mut Input<'_>| match input.byte() % 5 {
        0 => 0,
        1 => u64::MAX - u64::from(input.byte()),
        2 => input.u64(),
        _ => u64::from(input.byte()),
    };
    let (count_a, count_b) = (count(input), count(input));
    let (null, misaligned, alias) = a.pointer_errors();
    let overflow = count_a.checked_add(count_b).is_none();
    let status = unsafe {
        nk_moments_merge(
            channels,
            count_a,
            a.ptr(mean_a),
            a.ptr(m2_a),
            count_b,
            a.ptr(mean_b),
            a.ptr(m2_b),
        )
    };
    let expect = expected(null, overflow, false, false, misaligned, alias);
    if !check_status(&a, "moments_merge", status, expect) {
        return;
    }
    let (ma0, qa0, mb, qb) = (
        a.before_f64(mean_a),
        a.before_f64(m2_a),
        a.before_f64(mean_b),
        a.before_f64(m2_b),
    );
    let (ma1, qa1) = (a.now_f64(mean_a), a.now_f64(m2_a));
    for ch in 0..channels {
        let (want_m, want_q, mag_m, mag_q) = if count_b == 0 {
            (ma0[ch], qa0[ch], 0.0, 0.0)
        } else if count_a == 0 {
            (mb[ch], qb[ch], 0.0, 0.0)
        } else {
            let (na, nb) = (count_a as f64, count_b as f64);
            let n = na + nb;
            let d = mb[ch] - ma0[ch];
            let q = qa0[ch] + qb[ch] + d * d * (na * nb / n);
            (
                ma0[ch] + d * (nb / n),
                q,
                ma0[ch].abs() + mb[ch].abs(),
                qa0[ch].abs() + qb[ch].abs() + d * d * (na * nb / n),
            )
        };
        if mag_m == 0.0 && mag_q == 0.0 {
            assert!(
                ma1[ch].to_bits() == want_m.to_bits() && qa1[ch].to_bits() == want_q.to_bits(),
                "merge with an empty side changed channel {ch}"
            );
        } else {
            assert_close("merge mean", ch, ma1[ch], want_m, mag_m, 1e-12);
            assert_close("merge m2", ch, qa1[ch], want_q, mag_q, 1e-12);
        }
    }
}

fn fold(input: &mut Input<'_>, wild: u8) {
    let huge_call = input.byte() % 16 == 0;
    let (mut c_out, mut fan_in) = (input.size(12), input.size(40));
    let (buf_c, buf_n) = (c_out, c_out * fan_in);
    if huge_call {
        if input.bool() {
            c_out = huge(input)
        } else {
            fan_in = huge(input)
        }
    }
    let mut a = Arena::default();
    let gamma = a.opt_input("gamma", Kind::F32, buf_c, Fill::Data);
    let beta = a.opt_input("beta", Kind::F32, buf_c, Fill::Data);
    let mean = a.input("mean", Kind::F32, buf_c, Fill::Data);
    let var = a.input("var", Kind::F32, buf_c, Fill::Positive);
    let weight = a.inout("weight", Kind::F32, buf_n, Fill::Data);
    let bias = a.inout("bias", Kind::F32, buf_c, Fill::Data);
    a.place(input, wild);
    a.build(input);
    let eps = input.scalar(1e-5);
    let (null, misaligned, alias) = a.pointer_errors();
    let status = unsafe {
        nk_batchnorm_fold(
            c_out,
            fan_in,
            a.ptr(weight),
            a.ptr(bias),
            a.ptr(gamma),
            a.ptr(beta),
            a.ptr(mean),
            a.ptr(var),
            eps,
        )
    };
    if huge_call {
        check_huge(&a, "huge fold", status, buf_n == 0 && c_out < (1 << 40));
        return;
    }
    let expect = expected(null, false, false, bad_eps(eps), misaligned, alias);
    if !check_status(&a, "fold", status, expect) {
        return;
    }
    let (w0, b0, w1, b1) = (
        a.before_f32(weight),
        a.before_f32(bias),
        a.now_f32(weight),
        a.now_f32(bias),
    );
    let (g, be, m, v) = (
        a.before_f32(gamma),
        a.before_f32(beta),
        a.before_f32(mean),
        a.before_f32(var),
    );
    if !(sane32(&w0) && sane32(&b0) && sane32(&g) && sane32(&be) && sane32(&m) && sane32(&v)) {
        return;
    }
    for o in 0..c_out {
        let s = gamma_or(&g, o) / (f64::from(v[o]) + f64::from(eps)).sqrt();
        for i in 0..fan_in {
            let k = o * fan_in + i;
            let want = f64::from(w0[k]) * s;
            assert_close("fold weight", k, f64::from(w1[k]), want, want.abs(), 1e-5);
        }
        let want = (f64::from(b0[o]) - f64::from(m[o])) * s + beta_or(&be, o);
        let mag =
            (f64::from(b0[o]).abs() + f64::from(m[o]).abs()) * s.abs() + beta_or(&be, o).abs();
        assert_close("fold bias", o, f64::from(b1[o]), want, mag, 1e-5);
    }
}

/// Per-channel sums of the backward from the saved statistics: (sum dy, sum dy*xhat, their
/// magnitudes).
fn sums(
    call: &Call,
    x: &[f32],
    dy: &[f32],
    sm: &[f32],
    si: &[f32],
    ch: usize,
) -> (f64, f64, f64, f64) {
    let (m, s) = (f64::from(sm[ch]), f64::from(si[ch]));
    let (mut a, mut b, mut ma, mut mb) = (0.0, 0.0, 0.0, 0.0);
    for i in call.channel(ch) {
        let d = f64::from(dy[i]);
        let xv = f64::from(x[i]);
        a += d;
        b += d * (xv - m) * s;
        ma += d.abs();
        mb += d.abs() * (xv.abs() + m.abs()) * s.abs();
    }
    (a, b, ma, mb)
}

/// dx of one element: `gamma * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat / count)`
/// and its magnitude.
#[allow(clippy::too_many_arguments)]
fn dx_of(
    g: f64,
    m: f64,
    s: f64,
    x: f64,
    dy: f64,
    count: f64,
    sdy: (f64, f64),
    sdx: (f64, f64),
) -> (f64, f64) {
    let xhat = (x - m) * s;
    let want = g * s * (dy - sdy.0 / count - xhat * sdx.0 / count);
    let mag =
        (g * s).abs() * (dy.abs() + sdy.1 / count + (x.abs() + m.abs()) * s.abs() * sdx.1 / count);
    (want, mag)
}

fn backward(input: &mut Input<'_>, call: &Call, ctx: *mut nk_context, wild: u8) {
    let (n, c) = (call.n(), call.c());
    let mut a = Arena::default();
    let x = a.input("x", Kind::F32, n, Fill::Data);
    let dy = a.input("dy", Kind::F32, n, Fill::Data);
    let gamma = a.opt_input("gamma", Kind::F32, c, Fill::Data);
    let sm = a.input("save_mean", Kind::F32, c, Fill::Data);
    let si = a.input("save_invstd", Kind::F32, c, Fill::Positive);
    let dx = a.opt_output("dx", Kind::F32, n);
    a.replaces(dx, dy);
    let dgamma = a.opt_output("dgamma", Kind::F32, c);
    let dbeta = a.opt_output("dbeta", Kind::F32, c);
    a.place(input, wild);
    a.build(input);
    let (null, misaligned, alias) = a.pointer_errors();
    let status = unsafe {
        nk_batchnorm_backward(
            ctx,
            call.shape(),
            a.ptr(x),
            a.ptr(dy),
            a.ptr(dx),
            a.ptr(gamma),
            a.ptr(sm),
            a.ptr(si),
            a.ptr(dgamma),
            a.ptr(dbeta),
        )
    };
    if call.huge {
        check_huge(&a, "huge shape", status, call.empty_ok());
        return;
    }
    let expect = expected(null, false, false, call.bad_layout(), misaligned, alias);
    if !check_status(&a, "backward", status, expect) {
        return;
    }
    let (xs, dys, g, m, s) = (
        a.before_f32(x),
        a.before_f32(dy),
        a.before_f32(gamma),
        a.before_f32(sm),
        a.before_f32(si),
    );
    let (dx1, dg1, db1) = (a.now_f32(dx), a.now_f32(dgamma), a.now_f32(dbeta));
    if !(sane32(&xs) && sane32(&dys) && sane32(&g) && sane32(&m) && sane32(&s)) {
        return;
    }
    let count = call.count() as f64;
    for ch in 0..c {
        let (sdy, sdx, mdy, mdx) = sums(call, &xs, &dys, &m, &s, ch);
        if !dg1.is_empty() {
            assert_close("dgamma", ch, f64::from(dg1[ch]), sdx, mdx, TOL);
        }
        if !db1.is_empty() {
            assert_close("dbeta", ch, f64::from(db1[ch]), sdy, mdy, TOL);
        }
        if !dx1.is_empty() {
            for i in call.channel(ch) {
                let (want, mag) = dx_of(
                    gamma_or(&g, ch),
                    f64::from(m[ch]),
                    f64::from(s[ch]),
                    f64::from(xs[i]),
                    f64::from(dys[i]),
                    count,
                    (sdy, mdy),
                    (sdx, mdx),
                );
                assert_close("backward dx", i, f64::from(dx1[i]), want, mag, TOL);
            }
        }
    }
}

fn reduce(input: &mut Input<'_>, call: &Call, ctx: *mut nk_context, wild: u8) {
    let (n, c) = (call.n(), call.c());
    let mut a = Arena::default();
    let x = a.input("x", Kind::F32, n, Fill::Data);
    let dy = a.input("dy", Kind::F32, n, Fill::Data);
    let sm = a.input("save_mean", Kind::F32, c, Fill::Data);
    let si = a.input("save_invstd", Kind::F32, c, Fill::Positive);
    let sum_dy = a.output("sum_dy", Kind::F64, c);
    let sum_dx = a.output("sum_dy_xhat", Kind::F64, c);
    a.place(input, wild);
    a.build(input);
    let (null, misaligned, alias) = a.pointer_errors();
    let status = unsafe {
        nk_batchnorm_backward_reduce(
            ctx,
            call.shape(),
            a.ptr(x),
            a.ptr(dy),
            a.ptr(sm),
            a.ptr(si),
            a.ptr(sum_dy),
            a.ptr(sum_dx),
        )
    };
    if call.huge {
        check_huge(&a, "huge shape", status, call.empty_ok());
        return;
    }
    let expect = expected(null, false, false, call.bad_layout(), misaligned, alias);
    if !check_status(&a, "backward_reduce", status, expect) {
        return;
    }
    let (xs, dys, m, s) = (
        a.before_f32(x),
        a.before_f32(dy),
        a.before_f32(sm),
        a.before_f32(si),
    );
    let (got_dy, got_dx) = (a.now_f64(sum_dy), a.now_f64(sum_dx));
    if !(sane32(&xs) && sane32(&dys) && sane32(&m) && sane32(&s)) {
        return;
    }
    for ch in 0..c {
        let (sdy, sdx, mdy, mdx) = sums(call, &xs, &dys, &m, &s, ch);
        assert_close("sum_dy", ch, got_dy[ch], sdy, mdy, TOL);
        assert_close("sum_dy_xhat", ch, got_dx[ch], sdx, mdx, TOL);
    }
}

fn apply(input: &mut Input<'_>, call: &Call, ctx: *mut nk_context, wild: u8) {
    let (n, c) = (call.n(), call.c());
    let mut a = Arena::default();
    let x = a.input("x", Kind::F32, n, Fill::Data);
    let dy = a.input("dy", Kind::F32, n, Fill::Data);
    let gamma = a.opt_input("gamma", Kind::F32, c, Fill::Data);
    let sm = a.input("save_mean", Kind::F32, c, Fill::Data);
    let si = a.input("save_invstd", Kind::F32, c, Fill::Positive);
    let sum_dy = a.input("sum_dy", Kind::F64, c, Fill::Data);
    let sum_dx = a.input("sum_dy_xhat", Kind::F64, c, Fill::Data);
    let dx = a.output("dx", Kind::F32, n);
    a.replaces(dx, dy);
    a.place(input, wild);
    a.build(input);
    let local = call.count() as u64;
    let count = match input.byte() % 5 {
        0 => 0,
        1 => local.saturating_sub(1),
        2 => input.u64(),
        _ => local.saturating_add(u64::from(input.byte() % 4)),
    };
    let (null, misaligned, alias) = a.pointer_errors();
    let status = unsafe {
        nk_batchnorm_backward_apply(
            ctx,
            call.shape(),
            a.ptr(x),
            a.ptr(dy),
            a.ptr(dx),
            a.ptr(gamma),
            a.ptr(sm),
            a.ptr(si),
            count,
            a.ptr(sum_dy),
            a.ptr(sum_dx),
        )
    };
    if call.huge {
        check_huge(&a, "huge shape", status, call.empty_ok());
        return;
    }
    let bad_shape = count < local || count < 1;
    let expect = expected(null, false, bad_shape, call.bad_layout(), misaligned, alias);
    if !check_status(&a, "backward_apply", status, expect) {
        return;
    }
    let (xs, dys, g, m, s) = (
        a.before_f32(x),
        a.before_f32(dy),
        a.before_f32(gamma),
        a.before_f32(sm),
        a.before_f32(si),
    );
    let (sdy, sdx) = (a.before_f64(sum_dy), a.before_f64(sum_dx));
    let dx1 = a.now_f32(dx);
    if !(sane32(&xs)
        && sane32(&dys)
        && sane32(&g)
        && sane32(&m)
        && sane32(&s)
        && sane64(&sdy)
        && sane64(&sdx))
    {
        return;
    }
    for ch in 0..c {
        for i in call.channel(ch) {
            let (want, mag) = dx_of(
                gamma_or(&g, ch),
                f64::from(m[ch]),
                f64::from(s[ch]),
                f64::from(xs[i]),
                f64::from(dys[i]),
                count as f64,
                (sdy[ch], sdy[ch].abs()),
                (sdx[ch], sdx[ch].abs()),
            );
            assert_close("apply dx", i, f64::from(dx1[i]), want, mag, TOL);
        }
    }
}
