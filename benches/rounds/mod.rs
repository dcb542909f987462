//! What the benchmarks without criterion share: command-line options, deterministic data, and
//! medians over alternating rounds (every variant once per round, in a rotating order, each
//! for a calibrated number of calls).

use std::time::Instant;

/// SplitMix64 values, roughly normal (sum of four uniforms) around `center` with a spread of
/// about 0.6, the same on every run.
pub fn values(n: usize, seed: u64, center: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = |v: u64| (v & 0xFFFF) as f32 / 65536.0;
            u(z) + u(z >> 16) + u(z >> 32) + u(z >> 48) - 2.0 + center
        })
        .collect()
}

/// `--threads N --rounds N --target-ms T --filter S --isa portable|avx2|avx512`.
pub struct Options {
    pub threads: usize,
    /// The ISA the kernels run on (default: the best the CPU has).
    pub isa: normkit::Isa,
    pub rounds: usize,
    pub target_ms: f64,
    pub filter: Option<String>,
}

impl Options {
    /// The options of this run (defaults: 2 threads, 15 rounds of ~25 ms).
    pub fn parse() -> Options {
        let mut o = Options {
            threads: 2,
            isa: normkit::Isa::best(),
            rounds: 15,
            target_ms: 25.0,
            filter: None,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let value = args.get(i + 1).cloned();
            match args[i].as_str() {
                "--threads" => o.threads = value.and_then(|v| v.parse().ok()).expect("--threads N"),
                "--rounds" => o.rounds = value.and_then(|v| v.parse().ok()).expect("--rounds N"),
                "--target-ms" => {
                    o.target_ms = value.and_then(|v| v.parse().ok()).expect("--target-ms T")
                }
                "--filter" => o.filter = value,
                "--isa" => {
                    let name = value.expect("--isa portable|avx2|avx512").to_lowercase();
                    o.isa = *normkit::Isa::ALL
                        .iter()
                        .find(|i| format!("{i:?}").to_lowercase() == name)
                        .expect("--isa portable|avx2|avx512|neon");
                }
                // cargo bench passes --bench; ignore what is not ours.
                _ => {
                    i += 1;
                    continue;
                }
            }
            i += 2;
        }
        o
    }

    /// Whether a workload of this name is wanted.
    pub fn wants(&self, name: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| name.contains(f.as_str()))
    }

    /// The median seconds per call of each of `calls`, over alternating rounds.
    pub fn medians(&self, calls: &mut [&mut dyn FnMut()]) -> Vec<f64> {
        // Calibrate: calls per measurement for about target_ms (after a warm-up call).
        let reps: Vec<usize> = calls
            .iter_mut()
            .map(|f| {
                f();
                let t = time(1, *f);
                ((self.target_ms / 1e3 / t).round() as usize).max(1)
            })
            .collect();
        let mut times = vec![Vec::new(); calls.len()];
        for round in 0..self.rounds {
            for k in 0..calls.len() {
                let v = (k + round) % calls.len();
                times[v].push(time(reps[v], calls[v]));
            }
        }
        times.iter_mut().map(|t| median(t)).collect()
    }
}

/// Seconds per call of `f`, over `reps` calls.
fn time(reps: usize, f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
