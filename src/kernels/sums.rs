//! How every statistic is summed: `f32` lanes widened to `f64` (exactly) and added in `f64`
//! lanes, two sums at a time: `a += u` and `b += u * w`. The product of two `f32` values is exact
//! in `f64`, so the only rounding of a statistic is that of its terms before they are summed
//! (such as `d = x - K` in `f32`) and of the `f64` additions, about `n * 2^-53` relative: the
//! accuracy of a sum no longer depends on how many terms one accumulator takes.

use crate::simd::{F32Vec, F64Vec, MAX_LANES};

/// The sum of `v` (at most [`MAX_LANES`] values) added pairwise: element `i` and element `i +
/// ceil(n / 2)`, halving until one is left. A tree of `log2(n)` levels whose additions run side
/// by side, where adding in order is a chain of `n - 1` (the latency of a row's statistics).
#[inline(always)]
pub(crate) fn lane_sum(v: &[f64]) -> f64 {
    let mut t = [0f64; MAX_LANES];
    let mut n = v.len();
    t[..n].copy_from_slice(v);
    while n > 1 {
        let half = n.div_ceil(2);
        for i in 0..n / 2 {
            t[i] += t[i + half];
        }
        n = half;
    }
    t[0]
}

/// Per-lane `f64` sums `a = sum(u)` and `b = sum(u * w)` of `f32` vectors `u`, `w`.
#[derive(Clone, Copy)]
pub(crate) struct Sums2<V: F32Vec> {
    a: [V::D; 2],
    b: [V::D; 2],
}

impl<V: F32Vec> Sums2<V> {
    #[inline(always)]
    pub(crate) fn zero() -> Self {
        let z = V::D::splat(0.0);
        Sums2 {
            a: [z; 2],
            b: [z; 2],
        }
    }

    /// `a += u`, `b += u * w`, lane by lane, in `f64`.
    #[inline(always)]
    pub(crate) fn add(&mut self, u: V, w: V) {
        let (u0, u1) = u.widen();
        let (w0, w1) = w.widen();
        self.a[0] = self.a[0].add(u0);
        self.a[1] = self.a[1].add(u1);
        self.b[0] = u0.mul_add(w0, self.b[0]);
        self.b[1] = u1.mul_add(w1, self.b[1]);
    }

    /// `a += d`, `b += d * d`, lane by lane, for `f64` lanes `d = (d0, d1)` in the order
    /// [`F32Vec::widen`] gives them.
    #[inline(always)]
    pub(crate) fn add_wide(&mut self, d0: V::D, d1: V::D) {
        self.a[0] = self.a[0].add(d0);
        self.a[1] = self.a[1].add(d1);
        self.b[0] = d0.mul_add(d0, self.b[0]);
        self.b[1] = d1.mul_add(d1, self.b[1]);
    }

    /// `a += d * w`, `b += d * w * d`, lane by lane, for `f64` lanes `d` and weights `w` of 1
    /// or 0 (so that each lane adds `d` and `d * d` exactly as [`Sums2::add_wide`] does, or
    /// nothing, for finite `d`).
    #[inline(always)]
    pub(crate) fn add_wide_weighted(&mut self, d: (V::D, V::D), w: (V::D, V::D)) {
        let (dw0, dw1) = (d.0.mul(w.0), d.1.mul(w.1));
        self.a[0] = self.a[0].add(dw0);
        self.a[1] = self.a[1].add(dw1);
        self.b[0] = dw0.mul_add(d.0, self.b[0]);
        self.b[1] = dw1.mul_add(d.1, self.b[1]);
    }

    /// `a += u * v`, `b += u * v * w`, lane by lane, in `f64`: `u * v` is exact, its product
    /// with the `f64` lanes `w` (as [`F32Vec::widen`] orders them) rounds once.
    #[inline(always)]
    pub(crate) fn add3(&mut self, u: V, v: V, w: (V::D, V::D)) {
        let (u0, u1) = u.widen();
        let (v0, v1) = v.widen();
        let (p0, p1) = (u0.mul(v0), u1.mul(v1));
        self.a[0] = self.a[0].add(p0);
        self.a[1] = self.a[1].add(p1);
        self.b[0] = p0.mul_add(w.0, self.b[0]);
        self.b[1] = p1.mul_add(w.1, self.b[1]);
    }

    /// Lane-wise sums of two accumulators.
    #[inline(always)]
    pub(crate) fn merge(self, o: Self) -> Self {
        Sums2 {
            a: [self.a[0].add(o.a[0]), self.a[1].add(o.a[1])],
            b: [self.b[0].add(o.b[0]), self.b[1].add(o.b[1])],
        }
    }

    /// The lanes of `a` and of `b`, in lane order (the first `V::LANES` of each array).
    #[inline(always)]
    pub(crate) fn lanes(self) -> ([f64; MAX_LANES], [f64; MAX_LANES]) {
        let h = V::D::LANES;
        let (mut a, mut b) = ([0f64; MAX_LANES], [0f64; MAX_LANES]);
        self.a[0].store(&mut a[..h]);
        self.a[1].store(&mut a[h..]);
        self.b[0].store(&mut b[..h]);
        self.b[1].store(&mut b[h..]);
        (a, b)
    }

    /// The sums over the lanes, `(sum a, sum b)`, added pairwise ([`lane_sum`]).
    #[inline(always)]
    pub(crate) fn totals(self) -> (f64, f64) {
        let (a, b) = self.lanes();
        let n = V::LANES;
        (lane_sum(&a[..n]), lane_sum(&b[..n]))
    }

    /// Adds lane `j` of `a` to `dst_a[j]` and of `b` to `dst_b[j]`, for the first
    /// `dst_a.len()` (at most `V::LANES`, the same for both) lanes.
    #[inline(always)]
    pub(crate) fn add_to(self, dst_a: &mut [f64], dst_b: &mut [f64]) {
        let h = V::D::LANES;
        if dst_a.len() == V::LANES {
            let (a0, a1) = dst_a.split_at_mut(h);
            let (b0, b1) = dst_b.split_at_mut(h);
            V::D::load(a0).add(self.a[0]).store(a0);
            V::D::load(a1).add(self.a[1]).store(a1);
            V::D::load(b0).add(self.b[0]).store(b0);
            V::D::load(b1).add(self.b[1]).store(b1);
        } else {
            let (a, b) = self.lanes();
            for (d, s) in dst_a.iter_mut().zip(&a) {
                *d += s;
            }
            for (d, s) in dst_b.iter_mut().zip(&b) {
                *d += s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::emulated::Emulated;

    fn check<V: F32Vec>() {
        let l = V::LANES;
        let u: Vec<f32> = (0..3 * l).map(|i| i as f32 * 0.75 - 3.0).collect();
        let w: Vec<f32> = (0..3 * l).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        let mut s = Sums2::<V>::zero();
        let mut t = Sums2::<V>::zero();
        s.add(V::load(&u), V::load(&w));
        s.add(V::load(&u[l..]), V::load(&w[l..]));
        t.add(V::load(&u[2 * l..]), V::load(&w[2 * l..]));
        let s = s.merge(t);
        let (a, b) = s.lanes();
        for j in 0..l {
            let want_a: f64 = (0..3).map(|k| u[k * l + j] as f64).sum();
            let want_b: f64 = (0..3)
                .map(|k| u[k * l + j] as f64 * w[k * l + j] as f64)
                .sum();
            assert_eq!(a[j], want_a, "lane {j}");
            assert!((b[j] - want_b).abs() <= 1e-15 * want_b.abs(), "lane {j}");
        }
        // Widened lanes added as f64 lanes sum exactly as the f32 lanes do.
        let mut d = Sums2::<V>::zero();
        let mut e = Sums2::<V>::zero();
        for k in 0..3 {
            let v = V::load(&u[k * l..]);
            d.add(v, v);
            let (v0, v1) = v.widen();
            e.add_wide(v0, v1);
        }
        assert!(d.lanes() == e.lanes());
        // Weights 1 add as add_wide does, weights 0 add nothing.
        let mut f = Sums2::<V>::zero();
        let mut g = Sums2::<V>::zero();
        let (one, zero) = (V::splat(1.0).widen(), V::splat(0.0).widen());
        for k in 0..3 {
            let (v0, v1) = V::load(&u[k * l..]).widen();
            f.add_wide_weighted((v0, v1), one);
            g.add_wide_weighted((v0, v1), zero);
        }
        assert!(f.lanes() == e.lanes());
        assert!(g.lanes() == Sums2::<V>::zero().lanes());
        let (ta, tb) = s.totals();
        assert_eq!(ta, lane_sum(&a[..l]));
        assert_eq!(tb, lane_sum(&b[..l]));
        let (mut da, mut db) = (vec![1.0; l], vec![2.0; l]);
        s.add_to(&mut da, &mut db);
        let (mut pa, mut pb) = (vec![1.0; l - 1], vec![2.0; l - 1]);
        s.add_to(&mut pa, &mut pb);
        for j in 0..l {
            assert_eq!(da[j], 1.0 + a[j]);
            assert_eq!(db[j], 2.0 + b[j]);
            if j < l - 1 {
                assert_eq!(pa[j], da[j]);
                assert_eq!(pb[j], db[j]);
            }
        }
    }

    #[test]
    fn lane_sums_pair_up() {
        assert_eq!(lane_sum(&[]), 0.0);
        assert_eq!(lane_sum(&[5.0]), 5.0);
        // ((1 + 4) + 16) + (2 + 8): 16, the middle of five, joins at the next level.
        let v = [1.0, 2.0, 16.0, 4.0, 8.0];
        assert_eq!(lane_sum(&v), 31.0);
        // Pairwise, not in order: (1e16 - 1e16) + (1 + 1) is 2; in order the first 1 is lost.
        let v = [1e16, 1.0, -1e16, 1.0];
        assert_eq!(lane_sum(&v), 2.0);
        assert_eq!(v.iter().sum::<f64>(), 1.0);
        let w: Vec<f64> = (0..16).map(|i| (i * i) as f64).collect();
        assert_eq!(lane_sum(&w), w.iter().sum::<f64>());
    }

    #[test]
    fn emulated_lanes() {
        check::<Emulated<16>>();
        check::<Emulated<8>>();
        check::<Emulated<4>>();
    }

    #[test]
    fn this_cpu() {
        crate::simd::on_every_isa!(check);
    }
}
