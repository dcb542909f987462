//! Deterministic test data: SplitMix64 for the bits, Box-Muller for normal values. The same seed
//! gives the same values on every machine and in every run.

/// The SplitMix64 generator (Steele, Lea and Flood, 2014).
#[derive(Clone, Debug)]
pub struct Gen {
    state: u64,
    /// The second value of the last Box-Muller pair, not yet handed out.
    spare: Option<f64>,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            state: seed,
            spare: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n); `n > 0`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A standard normal value (Box-Muller; pairs are used in full).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    /// `n` values `offset + scale * N(0, 1)`, rounded to `f32`.
    pub fn normals(&mut self, n: usize, offset: f64, scale: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (offset + scale * self.normal()) as f32)
            .collect()
    }

    /// `n` values uniform in [lo, hi), rounded to `f32`.
    pub fn uniforms(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi) as f32).collect()
    }
}

/// `n` values `offset + scale * N(0, 1)` from `seed`.
pub fn normals(seed: u64, n: usize, offset: f64, scale: f64) -> Vec<f32> {
    Gen::new(seed).normals(n, offset, scale)
}
