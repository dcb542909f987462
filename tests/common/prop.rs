//! The configuration of every property test. By default each runs a fixed number of cases from
//! a fixed seed, so `cargo test` gives the same verdict on the same code every time (the test
//! gate must not fail at random). `NORMKIT_EXPLORE=<factor>` draws fresh seeds and runs
//! `factor` times as many cases, to look for new failures outside the gate; `PROPTEST_RNG_SEED`
//! replays one seed. A failure found either way is written to the test's
//! `tests/<file>.proptest-regressions`, whose cases run first on every later run: commit it to
//! keep the case as a regression test.

use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

/// The seed of every property test in the gate.
pub const SEED: u64 = 0x6e6f_726d_6b69_7431;

/// A configuration of `cases` cases (see the module documentation).
pub fn config(cases: u32) -> Config {
    // Reads PROPTEST_RNG_SEED (and the other PROPTEST_* variables) when set.
    let base = Config::default();
    let explore = std::env::var("NORMKIT_EXPLORE")
        .ok()
        .map(|v| v.trim().parse::<u32>().unwrap_or(10).max(1));
    let (cases, rng_seed) = match (explore, base.rng_seed) {
        (Some(factor), seed) => (cases.saturating_mul(factor), seed),
        (None, RngSeed::Random) => (cases, RngSeed::Fixed(SEED)),
        (None, seed) => (cases, seed),
    };
    Config {
        cases,
        rng_seed,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..base
    }
}
