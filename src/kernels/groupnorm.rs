//! Group-norm kernels: statistics per (batch, group) and the normalize pass, both layouts, and
//! the backward reductions and input gradient.
//!
//! Forward statistics reuse [`super::moments`]. The backward reduces, per (batch, channel),
//! `sum(dy)` and `sum(dy * (x - mean))` (with `mean` the `f32` mean its group saved, so `x - mean`
//! is exact for values near the mean whatever the data's offset), in `f32` lanes over short
//! blocks folded into `f64`. The input gradient is `dx = (x - mean) * b + (dy * a + k)` with
//! per-(batch, channel) coefficients computed in `f64` from those sums.

use super::backward::{WideGrad, grad};
use super::moments::{Moments, ROW_BLOCK, channel_moments};
use super::normalize::{WideAffine, wide_affine_span};
use super::sums::Sums2;
use crate::io::{RowIo, Spread};
use crate::simd::element::ElementIo;
use crate::simd::{F32Vec, Kernel};

/// Forward of one channels-first group in one visit: the moments of its `rows` rows (channels)
/// of `spatial` elements, read through `row_in`, then each row mapped through `row_out` with the
/// parameters `params(moments, row)` gives (`(shift, scale, offset)`). Returns the moments.
pub(crate) struct NcsGroupForward<'r, In, Out, P> {
    pub rows: usize,
    pub spatial: usize,
    pub row_in: &'r In,
    pub row_out: &'r Out,
    pub params: &'r P,
}

impl<'a, 'o, X, Y, In, Out, P> Kernel for NcsGroupForward<'_, In, Out, P>
where
    X: ElementIo,
    Y: ElementIo,
    In: Fn(usize) -> &'a [X],
    Out: Fn(usize) -> RowIo<'o, X, Y>,
    P: Fn(Moments, usize) -> WideAffine,
{
    type Output = Moments;
    #[inline(always)]
    fn run<V: F32Vec>(self) -> Moments {
        let moments = channel_moments::<V, _>(
            self.row_in,
            self.spatial,
            0..self.rows * self.spatial,
            Spread::NONE,
        );
        for r in 0..self.rows {
            let w = (self.params)(moments, r);
            wide_affine_span::<V, _, _, false>(&mut (self.row_out)(r), &w, false);
        }
        moments
    }
}

/// Channels-first rows with one affine map each: `io` holds whole rows of `spatial` elements,
/// the first being row `first_row` of the tensor; `params(row)` gives the row's map.
pub(crate) struct NcsRows<'a, P, X = f32, Y = X> {
    pub io: RowIo<'a, X, Y>,
    pub first_row: usize,
    pub spatial: usize,
    pub params: &'a P,
}

impl<X: ElementIo, Y: ElementIo, P: Fn(usize) -> WideAffine> Kernel for NcsRows<'_, P, X, Y> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let rows = self.io.len() / self.spatial;
        for r in 0..rows {
            let w = (self.params)(self.first_row + r);
            let mut row = self.io.part(r * self.spatial..(r + 1) * self.spatial);
            wide_affine_span::<V, _, _, false>(&mut row, &w, false);
        }
    }
}

/// Sums of a gradient reduction: `dy = sum(dy)`, `dy_x = sum(dy * (x - shift))`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct GradSums {
    pub dy: f64,
    pub dy_x: f64,
}

/// The gradient sums of one contiguous run (`x`, `dy` of equal length) with one shift, in
/// `f64` lanes (see [`super::sums`]): `dy * (x - shift)` is exact there.
#[inline(always)]
fn run_grad_sums<V: F32Vec, E: ElementIo>(x: &[E], dy: &[E], shift: f32) -> GradSums {
    let l = V::LANES;
    let k = V::splat(shift);
    let mut acc = [Sums2::<V>::zero(); 2];
    let mut xs = x.chunks_exact(2 * l);
    let mut ds = dy.chunks_exact(2 * l);
    for (xq, dq) in (&mut xs).zip(&mut ds) {
        for (j, a) in acc.iter_mut().enumerate() {
            a.add(V::read(&dq[j * l..]), V::read(&xq[j * l..]).sub(k));
        }
    }
    let (xr, dr) = (xs.remainder(), ds.remainder());
    for (j, (xv, dv)) in xr.chunks(l).zip(dr.chunks(l)).enumerate() {
        let (g, d) = if dv.len() == l {
            (V::read(dv), V::read(xv).sub(k))
        } else {
            // Lanes past the run load dy = 0: they add nothing.
            (V::read_partial(dv, 0.0), V::read_partial(xv, shift).sub(k))
        };
        acc[j].add(g, d);
    }
    let (dy, dy_x) = acc[0].merge(acc[1]).totals();
    GradSums { dy, dy_x }
}

/// Gradient sums of channels-first rows: `x`, `dy` hold whole rows of `spatial` elements, the
/// first being row `first_row`; row `r` is shifted by `shift(r)`. One entry of `out` per row.
pub(crate) struct NcsGradSums<'a, F, E = f32> {
    pub x: &'a [E],
    pub dy: &'a [E],
    pub first_row: usize,
    pub spatial: usize,
    pub shift: &'a F,
    pub out: &'a mut [GradSums],
}

impl<E: ElementIo, F: Fn(usize) -> f32> Kernel for NcsGradSums<'_, F, E> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let s = self.spatial;
        let rows = self.x.chunks_exact(s).zip(self.dy.chunks_exact(s));
        for (r, ((x, dy), out)) in rows.zip(self.out.iter_mut()).enumerate() {
            *out = run_grad_sums::<V, E>(x, dy, (self.shift)(self.first_row + r));
        }
    }
}

/// Gradient sums of channels-innermost rows of `channels` values (one batch item): channel `c`
/// shifted by `shift[c]`, summed over the rows in `f64` lanes (each lane one channel) in blocks
/// of [`ROW_BLOCK`] rows, blocks added in order to `out[c]` (length C).
pub(crate) struct NscGradSums<'a, E = f32> {
    pub x: &'a [E],
    pub dy: &'a [E],
    pub channels: usize,
    pub shift: &'a [f32],
    pub out: &'a mut [GradSums],
}

impl<E: ElementIo> Kernel for NscGradSums<'_, E> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let (c, l) = (self.channels, V::LANES);
        let block = ROW_BLOCK * c;
        for (xb, db) in self.x.chunks(block).zip(self.dy.chunks(block)) {
            // Tiles of two vectors of channels, summed over the block's rows in registers, then
            // the rest one vector at a time.
            let tiles = c / (2 * l) * (2 * l);
            for c0 in (0..tiles).step_by(2 * l) {
                let k = [V::read(&self.shift[c0..]), V::read(&self.shift[c0 + l..])];
                let mut acc = [Sums2::<V>::zero(); 2];
                for (xr, dr) in xb.chunks_exact(c).zip(db.chunks_exact(c)) {
                    for (j, a) in acc.iter_mut().enumerate() {
                        let g = V::read(&dr[c0 + j * l..]);
                        let d = V::read(&xr[c0 + j * l..]).sub(k[j]);
                        a.add(g, d);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    add_lanes(*a, &mut self.out[c0 + j * l..c0 + (j + 1) * l]);
                }
            }
            for c0 in (tiles..c).step_by(l) {
                let lanes = l.min(c - c0);
                let k = V::read_lanes(&self.shift[c0..c0 + lanes], 0.0);
                let mut acc = Sums2::<V>::zero();
                for (xr, dr) in xb.chunks_exact(c).zip(db.chunks_exact(c)) {
                    // Lanes past the channels load 0 in dy: they add nothing.
                    let g = V::read_lanes(&dr[c0..c0 + lanes], 0.0);
                    let d = V::read_lanes(&xr[c0..c0 + lanes], 0.0).sub(k);
                    acc.add(g, d);
                }
                add_lanes(acc, &mut self.out[c0..c0 + lanes]);
            }
        }
    }
}

/// Adds lane `j` of the sums to `out[j]` (`dy` and `dy_x`) for every `j < out.len()`.
#[inline(always)]
fn add_lanes<V: F32Vec>(sums: Sums2<V>, out: &mut [GradSums]) {
    let (a, b) = sums.lanes();
    for (j, o) in out.iter_mut().enumerate() {
        o.dy += a[j];
        o.dy_x += b[j];
    }
}

/// Channels-first rows of the input gradient: `x` and `io` (`dy` in, `dx` out) hold whole rows
/// of `spatial` elements, the first being row `first_row`; `coefficients(row)` gives the row's
/// (a row whose coefficients do not fit `f32` is computed in `f64`, see [`WideGrad`]).
pub(crate) struct NcsGradApply<'a, F, E = f32> {
    pub x: &'a [E],
    pub io: RowIo<'a, E, E>,
    pub first_row: usize,
    pub spatial: usize,
    pub coefficients: &'a F,
}

/// `dx = grad(dy, x)` over one run with one set of coefficients (`io`: `dy` in, `dx` out).
#[inline(always)]
fn apply_run<V: F32Vec, E: ElementIo>(x: &[E], io: &mut RowIo<'_, E, E>, p: (f32, f32, f32, f32)) {
    let l = V::LANES;
    let (m, a, b, k) = (V::splat(p.0), V::splat(p.1), V::splat(p.2), V::splat(p.3));
    let full = x.len() / l * l;
    match io {
        RowIo::Separate(dy, dx) => {
            for ((xs, ds), os) in x[..full]
                .chunks_exact(l)
                .zip(dy[..full].chunks_exact(l))
                .zip(dx[..full].chunks_exact_mut(l))
            {
                grad(V::read(ds), V::read(xs), m, a, b, k).write(os);
            }
            if full < x.len() {
                let v = grad(
                    V::read_partial(&dy[full..], 0.0),
                    V::read_partial(&x[full..], 0.0),
                    m,
                    a,
                    b,
                    k,
                );
                v.write_partial(&mut dx[full..]);
            }
        }
        RowIo::InPlace(buf) => {
            for (xs, vs) in x[..full]
                .chunks_exact(l)
                .zip(buf[..full].chunks_exact_mut(l))
            {
                grad(V::read(vs), V::read(xs), m, a, b, k).write(vs);
            }
            if full < x.len() {
                let tail = &mut buf[full..];
                let v = grad(
                    V::read_partial(tail, 0.0),
                    V::read_partial(&x[full..], 0.0),
                    m,
                    a,
                    b,
                    k,
                );
                v.write_partial(tail);
            }
        }
    }
}

impl<E: ElementIo, F: Fn(usize) -> WideGrad> Kernel for NcsGradApply<'_, F, E> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let s = self.spatial;
        let rows = self.x.len() / s;
        for r in 0..rows {
            let wide = (self.coefficients)(self.first_row + r);
            let (x, mut io) = (
                &self.x[r * s..(r + 1) * s],
                self.io.part(r * s..(r + 1) * s),
            );
            match wide.narrow() {
                Some(p) => apply_run::<V, E>(x, &mut io, p),
                None => wide.apply(x, &mut io),
            }
        }
    }
}

/// Channels-innermost rows of the input gradient for one batch item: `x` and `io` hold whole
/// rows of `channels` values; the coefficients are per channel (`mean`, `a`, `b`, `k`, length C).
pub(crate) struct NscGradApply<'a, E = f32> {
    pub x: &'a [E],
    pub io: RowIo<'a, E, E>,
    pub channels: usize,
    pub mean: &'a [f32],
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub k: &'a [f32],
}

impl<E: ElementIo> Kernel for NscGradApply<'_, E> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let (c, l) = (self.channels, V::LANES);
        let rows = self.x.len() / c;
        for r in 0..rows {
            let x = &self.x[r * c..(r + 1) * c];
            let mut io = self.io.part(r * c..(r + 1) * c);
            for c0 in (0..c).step_by(l) {
                let lanes = l.min(c - c0);
                let (m, a, b, k) = (
                    V::read_lanes(&self.mean[c0..c0 + lanes], 0.0),
                    V::read_lanes(&self.a[c0..c0 + lanes], 0.0),
                    V::read_lanes(&self.b[c0..c0 + lanes], 0.0),
                    V::read_lanes(&self.k[c0..c0 + lanes], 0.0),
                );
                let xv = V::read_lanes(&x[c0..c0 + lanes], 0.0);
                match &mut io {
                    RowIo::Separate(dy, dx) => {
                        let v = grad(V::read_lanes(&dy[c0..c0 + lanes], 0.0), xv, m, a, b, k);
                        v.write_lanes(&mut dx[c0..c0 + lanes]);
                    }
                    RowIo::InPlace(buf) => {
                        let v = grad(V::read_lanes(&buf[c0..c0 + lanes], 0.0), xv, m, a, b, k);
                        v.write_lanes(&mut buf[c0..c0 + lanes]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The kernels with 16 emulated lanes (the vector widths and partial vectors of AVX-512)
    //! and with 4 and 8, against plain loops in `f64`.

    use super::*;
    use crate::simd::emulated::Emulated;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8;
                (h % 1000) as f32 / 250.0 - 2.0
            })
            .collect()
    }

    fn close(a: f64, b: f64, scale: f64) -> bool {
        (a - b).abs() <= 1e-5 * scale
    }

    fn check_lanes<V: F32Vec>() {
        for c in [1usize, 3, 7, 8, 15, 16, 17, 33] {
            for rows in [1usize, 5, 64, 130] {
                let (x, dy) = (values(rows * c, 1), values(rows * c, 2));
                let shift = values(c, 3);
                // Channels innermost: per-channel sums.
                let mut out = vec![GradSums::default(); c];
                NscGradSums {
                    x: &x,
                    dy: &dy,
                    channels: c,
                    shift: &shift,
                    out: &mut out,
                }
                .run::<V>();
                for ch in 0..c {
                    let (mut a, mut b, mut m) = (0.0, 0.0, 0.0);
                    for r in 0..rows {
                        let (xv, g) = (x[r * c + ch] as f64, dy[r * c + ch] as f64);
                        a += g;
                        b += g * (xv - shift[ch] as f64);
                        m += (g * (xv - shift[ch] as f64)).abs() + g.abs();
                    }
                    assert!(close(out[ch].dy, a, m), "{} lanes, C {c}", V::LANES);
                    assert!(close(out[ch].dy_x, b, m), "{} lanes, C {c}", V::LANES);
                }
                // Channels first: rows of `c` values (c as the spatial size here).
                let mut rows_out = vec![GradSums::default(); rows];
                let shift_of = |r: usize| shift[r % c];
                NcsGradSums {
                    x: &x,
                    dy: &dy,
                    first_row: 0,
                    spatial: c,
                    shift: &shift_of,
                    out: &mut rows_out,
                }
                .run::<V>();
                for (r, o) in rows_out.iter().enumerate() {
                    let (mut a, mut b, mut m) = (0.0, 0.0, 0.0);
                    for i in r * c..(r + 1) * c {
                        let (xv, g) = (x[i] as f64, dy[i] as f64);
                        a += g;
                        b += g * (xv - shift_of(r) as f64);
                        m += (g * (xv - shift_of(r) as f64)).abs() + g.abs();
                    }
                    assert!(close(o.dy, a, m) && close(o.dy_x, b, m));
                }
                // Input gradient, both layouts, separate and in place.
                let (a, b, k) = (values(c, 4), values(c, 5), values(c, 6));
                let want = |i: usize, ch: usize| {
                    (x[i] as f64 - shift[ch] as f64) * b[ch] as f64
                        + (dy[i] as f64 * a[ch] as f64 + k[ch] as f64)
                };
                let mut dx = vec![0f32; x.len()];
                NscGradApply {
                    x: &x,
                    io: RowIo::Separate(&dy, &mut dx),
                    channels: c,
                    mean: &shift,
                    a: &a,
                    b: &b,
                    k: &k,
                }
                .run::<V>();
                let mut in_place = dy.clone();
                NscGradApply {
                    x: &x,
                    io: RowIo::InPlace(&mut in_place),
                    channels: c,
                    mean: &shift,
                    a: &a,
                    b: &b,
                    k: &k,
                }
                .run::<V>();
                assert_eq!(dx, in_place);
                for (i, &v) in dx.iter().enumerate() {
                    assert!(close(v as f64, want(i, i % c), 10.0), "dx[{i}]");
                }
                let coefficients = |r: usize| WideGrad {
                    mean: shift[r % c],
                    a: a[r % c] as f64,
                    b: b[r % c] as f64,
                    k: k[r % c] as f64,
                };
                let mut dx = vec![0f32; x.len()];
                NcsGradApply {
                    x: &x,
                    io: RowIo::Separate(&dy, &mut dx),
                    first_row: 0,
                    spatial: c,
                    coefficients: &coefficients,
                }
                .run::<V>();
                for (i, &v) in dx.iter().enumerate() {
                    let r = i / c;
                    assert!(close(v as f64, want(i, r % c), 10.0), "dx[{i}]");
                }
            }
        }
    }

    #[test]
    fn kernels_on_emulated_lanes() {
        check_lanes::<Emulated<16>>();
        check_lanes::<Emulated<8>>();
        check_lanes::<Emulated<4>>();
    }
}
