//! Drives the group-norm C entry points (group norm forward and backward, instance norm
//! forward) with arbitrary sizes, group counts (dividing the channels or not, zero), layouts
//! (including values outside the enum), `eps` (NaN, inf, negative, huge), NULL optional and
//! required pointers, pointers misaligned by a few bytes, in place and overlapping buffers, and
//! sizes that overflow.
//!
//! Asserts: no crash or sanitizer report; the status is exactly the contract's (error
//! precedence NULL, OVERFLOW, BAD_SHAPE, BAD_ARGUMENT, MISALIGNED, ALIAS); on error every byte
//! is unchanged; on success only output bytes changed and every output (data, saved statistics,
//! gradients) agrees with a float64 loop written here (skipped where inputs are not finite or
//! near float32 overflow).
//!
//! Run: `cargo +nightly fuzz run groupnorm_ffi -- -max_total_time=60` (from `fuzz/`).
#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use normkit::ffi::*;

const TOL: f64 = 1.0e-4;

#[derive(Debug)]
struct Call {
    batch: usize,
    channels: usize,
    spatial: usize,
    layout: i32,
    groups: usize,
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
    fn n(&self) -> usize {
        if self.huge {
            16
        } else {
            self.batch * self.channels * self.spatial
        }
    }
    fn c(&self) -> usize {
        self.channels.min(64)
    }
    fn saves(&self) -> usize {
        if self.huge {
            16
        } else {
            self.batch * self.groups
        }
    }
    /// Whether a huge call may succeed: the tensor is empty and neither the per-channel arrays
    /// nor the `batch * groups` saves overflow (`groups`: C for instance norm).
    fn empty_ok(&self, instance: bool) -> bool {
        let groups = if instance { self.channels } else { self.groups };
        self.channels < (1 << 40)
            && (self.batch < (1 << 40) || groups == 0)
            && (self.batch == 0 || self.channels == 0 || self.spatial == 0)
    }
    fn bad_layout(&self) -> bool {
        !(0..=1).contains(&self.layout)
    }
    fn bad_groups(&self) -> bool {
        self.groups == 0 || !self.channels.is_multiple_of(self.groups)
    }
    /// Indices of the values of group `g` of item `n`.
    fn group(&self, n: usize, g: usize) -> Vec<(usize, usize)> {
        let per = self.channels / self.groups;
        let mut v = Vec::new();
        for c in g * per..(g + 1) * per {
            for s in 0..self.spatial {
                v.push((
                    index(
                        self.layout,
                        (self.batch, self.channels, self.spatial),
                        n,
                        c,
                        s,
                    ),
                    c,
                ));
            }
        }
        v
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let op = input.byte() % 3;
    let ctx = context(input.byte());
    let big = input.byte() % 8 == 0;
    let mut call = Call {
        batch: input.size(4),
        channels: input.size(if big { 32 } else { 12 }),
        spatial: if big {
            1 + usize::from(input.byte()) * 2
        } else {
            input.size(30)
        },
        layout: input.layout(),
        groups: 0,
        huge: false,
    };
    call.groups = match input.byte() % 8 {
        0 => input.size(14),
        1 => call.channels,
        _ => {
            let divisors: Vec<usize> = (1..=call.channels)
                .filter(|g| call.channels % g == 0)
                .collect();
            divisors
                .get(usize::from(input.byte()) % divisors.len().max(1))
                .copied()
                .unwrap_or(1)
        }
    };
    if op == 2 {
        call.groups = call.channels;
    }
    if input.byte() % 16 == 0 {
        call.huge = true;
        match input.byte() % 3 {
            0 => call.batch = huge(&mut input),
            1 => call.channels = huge(&mut input),
            _ => call.spatial = huge(&mut input),
        }
    }
    let wild = input.byte();
    match op {
        0 | 2 => forward(&mut input, &call, ctx, wild, op == 2),
        _ => backward(&mut input, &call, ctx, wild),
    }
});

fn forward(input: &mut Input<'_>, call: &Call, ctx: *mut nk_context, wild: u8, instance: bool) {
    let (n, c, saves) = (call.n(), call.c(), call.saves());
    let mut a = Arena::default();
    let x = a.input("x", Kind::F32, n, Fill::Data);
    let gamma = a.opt_input("gamma", Kind::F32, c, Fill::Data);
    let beta = a.opt_input("beta", Kind::F32, c, Fill::Data);
    let y = a.output("y", Kind::F32, n);
    a.replaces(y, x);
    let sm = a.opt_output("save_mean", Kind::F32, saves);
    let si = a.opt_output("save_invstd", Kind::F32, saves);
    a.place(input, wild);
    a.build(input);
    let eps = input.scalar(1e-5);
    let (null, misaligned, alias) = a.pointer_errors();
    let status = unsafe {
        if instance {
            nk_instancenorm_forward(
                ctx,
                call.shape(),
                a.ptr(x),
                a.ptr(y),
                a.ptr(gamma),
                a.ptr(beta),
                eps,
                a.ptr(sm),
                a.ptr(si),
            )
        } else {
            nk_groupnorm_forward(
                ctx,
                call.shape(),
                call.groups,
                a.ptr(x),
                a.ptr(y),
                a.ptr(gamma),
                a.ptr(beta),
                eps,
                a.ptr(sm),
                a.ptr(si),
            )
        }
    };
    let what = if instance {
        "instancenorm_forward"
    } else {
        "groupnorm_forward"
    };
    if call.huge {
        check_huge(
            &a,
            &format!("{what} {call:?}"),
            status,
            call.empty_ok(instance),
        );
        return;
    }
    let bad_shape = if instance {
        call.batch > 0 && call.channels > 0 && call.spatial == 0
    } else {
        call.bad_groups() || (call.batch > 0 && (call.channels == 0 || call.spatial == 0))
    };
    let expect = expected(
        null,
        false,
        bad_shape,
        bad_eps(eps) || call.bad_layout(),
        misaligned,
        alias,
    );
    if !check_status(&a, what, status, expect) {
        return;
    }
    let (xs, g, b, ys) = (
        a.before_f32(x),
        a.before_f32(gamma),
        a.before_f32(beta),
        a.now_f32(y),
    );
    let (sm1, si1) = (a.now_f32(sm), a.now_f32(si));
    if !(sane32(&xs) && sane32(&g) && sane32(&b)) || call.groups == 0 {
        return;
    }
    for item in 0..call.batch {
        for grp in 0..call.groups {
            let idx = call.group(item, grp);
            let k = idx.len() as f64;
            let mean = idx.iter().map(|&(i, _)| f64::from(xs[i])).sum::<f64>() / k;
            let var = idx
                .iter()
                .map(|&(i, _)| (f64::from(xs[i]) - mean).powi(2))
                .sum::<f64>()
                / k;
            let inv = 1.0 / (var + f64::from(eps)).sqrt();
            for &(i, ch) in &idx {
                let (gc, bc) = (
                    g.get(ch).map_or(1.0, |&v| f64::from(v)),
                    b.get(ch).map_or(0.0, |&v| f64::from(v)),
                );
                let xv = f64::from(xs[i]);
                let mag = (xv.abs() + mean.abs() + var.sqrt()) * (inv * gc).abs() + bc.abs();
                assert_close(
                    what,
                    i,
                    f64::from(ys[i]),
                    (xv - mean) * inv * gc + bc,
                    mag,
                    TOL,
                );
            }
            let s = item * call.groups + grp;
            if !sm1.is_empty() {
                assert_close(
                    "save_mean",
                    s,
                    f64::from(sm1[s]),
                    mean,
                    mean.abs() + var.sqrt(),
                    1e-5,
                );
            }
            if !si1.is_empty() {
                assert_close("save_invstd", s, f64::from(si1[s]), inv, inv, TOL);
            }
        }
    }
}

fn backward(input: &mut Input<'_>, call: &Call, ctx: *mut nk_context, wild: u8) {
    let (n, c, saves) = (call.n(), call.c(), call.saves());
    let mut a = Arena::default();
    let x = a.input("x", Kind::F32, n, Fill::Data);
    let dy = a.input("dy", Kind::F32, n, Fill::Data);
    let gamma = a.opt_input("gamma", Kind::F32, c, Fill::Data);
    let sm = a.input("save_mean", Kind::F32, saves, Fill::Data);
    let si = a.input("save_invstd", Kind::F32, saves, Fill::Positive);
    let dx = a.opt_output("dx", Kind::F32, n);
    a.replaces(dx, dy);
    let dgamma = a.opt_output("dgamma", Kind::F32, c);
    let dbeta = a.opt_output("dbeta", Kind::F32, c);
    a.place(input, wild);
    a.build(input);
    let (null, misaligned, alias) = a.pointer_errors();
    let status = unsafe {
        nk_groupnorm_backward(
            ctx,
            call.shape(),
            call.groups,
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
        check_huge(&a, "groupnorm_backward", status, call.empty_ok(false));
        return;
    }
    let expect = expected(
        null,
        false,
        call.bad_groups(),
        call.bad_layout(),
        misaligned,
        alias,
    );
    if !check_status(&a, "groupnorm_backward", status, expect) {
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
    let gamma_of = |ch: usize| g.get(ch).map_or(1.0, |&v| f64::from(v));
    let cc = call.channels;
    let (mut dg, mut dgm, mut db, mut dbm) =
        (vec![0.0; cc], vec![0.0; cc], vec![0.0; cc], vec![0.0; cc]);
    for item in 0..call.batch {
        for grp in 0..call.groups {
            let idx = call.group(item, grp);
            let k = idx.len() as f64;
            let st = item * call.groups + grp;
            let (mr, sr) = (f64::from(m[st]), f64::from(s[st]));
            let (mut sum_g, mut sum_gm, mut sum_gx, mut sum_gxm) = (0.0, 0.0, 0.0, 0.0);
            for &(i, ch) in &idx {
                let (xv, d) = (f64::from(xs[i]), f64::from(dys[i]));
                let gd = d * gamma_of(ch);
                let xhat = (xv - mr) * sr;
                let xmag = (xv.abs() + mr.abs()) * sr.abs();
                sum_g += gd;
                sum_gm += gd.abs();
                sum_gx += gd * xhat;
                sum_gxm += gd.abs() * xmag;
                dg[ch] += d * xhat;
                dgm[ch] += d.abs() * xmag;
                db[ch] += d;
                dbm[ch] += d.abs();
            }
            if dx1.is_empty() {
                continue;
            }
            for &(i, ch) in &idx {
                let (xv, d) = (f64::from(xs[i]), f64::from(dys[i]));
                let gd = d * gamma_of(ch);
                let xhat = (xv - mr) * sr;
                let xmag = (xv.abs() + mr.abs()) * sr.abs();
                let want = sr * (gd - sum_g / k - xhat * sum_gx / k);
                let mag = sr.abs() * (gd.abs() + sum_gm / k + xmag * sum_gxm / k);
                assert_close("groupnorm dx", i, f64::from(dx1[i]), want, mag, TOL);
            }
        }
    }
    for ch in 0..cc {
        if !dg1.is_empty() {
            assert_close("dgamma", ch, f64::from(dg1[ch]), dg[ch], dgm[ch], TOL);
        }
        if !db1.is_empty() {
            assert_close("dbeta", ch, f64::from(db1[ch]), db[ch], dbm[ch], TOL);
        }
    }
}
