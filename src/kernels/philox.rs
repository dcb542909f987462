//! Philox4x32-10, the counter-based generator of the dropout family (Salmon, Moraes, Dror and
//! Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11; the Random123 library).
//!
//! A block of four 32-bit words is a pure function of a 128-bit counter and a 64-bit key: ten
//! rounds, each two 32x32->64-bit multiplies whose halves are mixed with the other two counter
//! words and the round key. The scalar version here is the reference; the vector version
//! computes one block per lane, `LANES` consecutive counters at once.
//!
//! The stream of the dropout family: word `w` of seed `s` is `out[w & 3]` of the block with
//! counter `{lo32(w >> 2), hi32(w >> 2), 0, 0}` and key `{lo32(s), hi32(s)}`.

use crate::simd::U32Vec;

/// Multipliers of the two Philox products.
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
/// Weyl increments of the key between rounds.
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;
const ROUNDS: u32 = 10;

/// The high and low halves of `a * b`.
#[inline(always)]
fn mul_hi_lo(a: u32, b: u32) -> (u32, u32) {
    let product = u64::from(a) * u64::from(b);
    ((product >> 32) as u32, product as u32)
}

/// The key of round `round` (0-based): the key plus `round` Weyl increments.
#[inline(always)]
fn round_key(key: [u32; 2], round: u32) -> [u32; 2] {
    [
        key[0].wrapping_add(W0.wrapping_mul(round)),
        key[1].wrapping_add(W1.wrapping_mul(round)),
    ]
}

/// Philox4x32-10 of one counter: the plain reference implementation.
pub(crate) fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    for round in 0..ROUNDS {
        let [k0, k1] = round_key(key, round);
        let (hi0, lo0) = mul_hi_lo(M0, c0);
        let (hi1, lo1) = mul_hi_lo(M1, c2);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// The key of the stream of `seed`.
#[inline(always)]
pub(crate) fn seed_key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// Word `index` of the stream of `seed`, computed alone.
pub(crate) fn stream_word(seed: u64, index: u64) -> u32 {
    let block = index >> 2;
    philox4x32_10([block as u32, (block >> 32) as u32, 0, 0], seed_key(seed))[(index & 3) as usize]
}

/// The ten round keys of a stream, as scalars and as vectors.
pub(crate) struct StreamKey<U> {
    scalar: [[u32; 2]; ROUNDS as usize],
    vector: [[U; 2]; ROUNDS as usize],
}

impl<U: U32Vec> StreamKey<U> {
    #[inline(always)]
    pub(crate) fn new(key: [u32; 2]) -> Self {
        let mut scalar = [[0; 2]; ROUNDS as usize];
        let mut vector = [[U::splat(0); 2]; ROUNDS as usize];
        for round in 0..ROUNDS as usize {
            scalar[round] = round_key(key, round as u32);
            vector[round] = [U::splat(scalar[round][0]), U::splat(scalar[round][1])];
        }
        StreamKey { scalar, vector }
    }
}

// The vector rounds work in "pair form": a vector of counter words holds one counter in each
// 64-bit pair of lanes, in the even (low) lane; the odd lanes hold anything. `mul_even` then
// gives both halves of each product in place, with no shuffling, and the high half reaches the
// even lane with one 64-bit shift. A full vector of counters is two such halves.

/// One Philox round in pair form.
#[inline(always)]
fn round_pairs<U: U32Vec>(c: [U; 4], k: &[U; 2]) -> [U; 4] {
    let p0 = c[0].mul_even(M0);
    let p1 = c[2].mul_even(M1);
    [
        p1.odd_to_even().xor3(c[1], k[0]),
        p1,
        p0.odd_to_even().xor3(c[3], k[1]),
        p0,
    ]
}

/// `[a[i].even_pairs(b[i])]`: a vector of counters back from its two halves.
#[inline(always)]
fn join<U: U32Vec>(a: [U; 4], b: [U; 4]) -> [U; 4] {
    [
        a[0].even_pairs(b[0]),
        a[1].even_pairs(b[1]),
        a[2].even_pairs(b[2]),
        a[3].even_pairs(b[3]),
    ]
}

/// Philox4x32-10 of `LANES` counters at once: lane `j` of word `i` of the result is word `i`
/// of the block of the counter whose words are lane `j` of `counter`.
#[inline(always)]
pub(crate) fn philox4x32_10_vec<U: U32Vec>(counter: [U; 4], key: &StreamKey<U>) -> [U; 4] {
    let mut even = counter;
    let mut odd = [
        counter[0].odd_to_even(),
        counter[1].odd_to_even(),
        counter[2].odd_to_even(),
        counter[3].odd_to_even(),
    ];
    for k in &key.vector {
        even = round_pairs(even, k);
        odd = round_pairs(odd, k);
    }
    join(even, odd)
}

/// The blocks `block .. block + N * LANES` of a stream (counter `{lo32(b), hi32(b), 0, 0}`
/// for block `b`), as `N` vectors of `LANES` blocks each: lane `j` of word `i` of vector `v` is
/// word `4 * (block + v * LANES + j) + i` of the stream.
///
/// Computed as `2N` independent chains (each vector is two halves in pair form), so that the
/// multiplies of one overlap the latency of another. The first two rounds are partly scalar:
/// while no lane carries into the high counter word, the words that round 1 leaves equal in
/// every lane (counter word 1 is `hi32(b)`, words 2 and 3 are 0) are computed once.
#[inline(always)]
pub(crate) fn stream_blocks<U: U32Vec, const N: usize>(
    block: u64,
    key: &StreamKey<U>,
) -> [[U; 4]; N] {
    let l = U::LANES;
    let lo = block as u32;
    let hi = (block >> 32) as u32;
    let mut out = [[U::splat(0); 4]; N];
    if lo.checked_add((N * l) as u32 - 1).is_none() {
        // The low counter word wraps within these blocks: count each lane on its own.
        for (v, words) in out.iter_mut().enumerate() {
            let mut low = [0u32; crate::simd::MAX_LANES];
            let mut high = [0u32; crate::simd::MAX_LANES];
            for (j, (lo_j, hi_j)) in low.iter_mut().zip(&mut high).take(l).enumerate() {
                let b = block.wrapping_add((v * l + j) as u64);
                *lo_j = b as u32;
                *hi_j = (b >> 32) as u32;
            }
            let zero = U::splat(0);
            let counter = [U::load(&low), U::load(&high), zero, zero];
            *words = philox4x32_10_vec(counter, key);
        }
        return out;
    }
    // Round 1: the second product is 0 (c2 = 0), so c0 becomes hi ^ k0 in every lane and
    // c1 becomes 0.
    let c0_after_1 = hi ^ key.scalar[0][0];
    // Round 2: c0 = hi ^ k0 and c1 = 0 in every lane.
    let (hi0, lo0) = mul_hi_lo(M0, c0_after_1);
    let c2_xor = U::splat(hi0 ^ key.scalar[1][1]);
    let c3 = U::splat(lo0);
    // The chains: the even and odd blocks of each vector.
    let even = U::lane_index().and(U::splat(!1));
    let mut chains = [[[U::splat(0); 4]; 2]; N];
    for (v, halves) in chains.iter_mut().enumerate() {
        let first = U::splat(lo.wrapping_add((v * l) as u32)).add(even);
        for (h, chain) in halves.iter_mut().enumerate() {
            let c0 = first.add(U::splat(h as u32));
            let p0 = c0.mul_even(M0);
            let c2 = p0.odd_to_even().xor(key.vector[0][1]);
            let p1 = c2.mul_even(M1);
            *chain = [
                p1.odd_to_even().xor(key.vector[1][0]),
                p1,
                p0.xor(c2_xor),
                c3,
            ];
        }
    }
    // Rounds 3 to 10, unrolled so that the chains interleave freely across rounds.
    macro_rules! rounds {
        ($($r:literal)*) => {$(
            for halves in chains.iter_mut() {
                for chain in halves.iter_mut() {
                    *chain = round_pairs(*chain, &key.vector[$r]);
                }
            }
        )*};
    }
    rounds!(2 3 4 5 6 7 8 9);
    for (words, [even, odd]) in out.iter_mut().zip(chains) {
        *words = join(even, odd);
    }
    out
}

/// The blocks of a stream in order, `LANES` at a time (computed two vectors at a time).
pub(crate) struct BlockStream<U> {
    key: StreamKey<U>,
    /// The first block of the next pair of vectors.
    block: u64,
    spare: Option<[U; 4]>,
}

impl<U: U32Vec> BlockStream<U> {
    /// The stream of `seed` from block `first_block` on.
    #[inline(always)]
    pub(crate) fn new(seed: u64, first_block: u64) -> Self {
        BlockStream {
            key: StreamKey::new(seed_key(seed)),
            block: first_block,
            spare: None,
        }
    }

    /// The next `LANES` blocks: lane `j` of word `i` is word `i` of the `j`-th block.
    ///
    /// With 32 registers, two vectors are computed at once (four chains); with 16, one (two
    /// chains), which is what fits without spilling.
    #[inline(always)]
    pub(crate) fn next(&mut self) -> [U; 4] {
        if U::REGISTERS < 32 {
            let [words] = stream_blocks::<U, 1>(self.block, &self.key);
            self.block += U::LANES as u64;
            return words;
        }
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        let [first, second] = stream_blocks::<U, 2>(self.block, &self.key);
        self.block += 2 * U::LANES as u64;
        self.spare = Some(second);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::emulated::Emulated;
    use crate::simd::{F32Vec, Isa, Kernel, SupportedIsa, dispatch};

    /// Random123's known-answer vectors for philox4x32 with 10 rounds: counter, key, result.
    const KNOWN_ANSWERS: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0, 0, 0, 0],
            [0, 0],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];

    #[test]
    fn scalar_matches_known_answers() {
        for (counter, key, expected) in KNOWN_ANSWERS {
            assert_eq!(
                philox4x32_10(counter, key),
                expected,
                "counter {counter:x?}"
            );
        }
    }

    #[test]
    fn stream_word_reads_the_block_of_its_index() {
        let seed = 0x0123_4567_89ab_cdef_u64;
        for index in [0u64, 1, 2, 3, 4, 7, 1 << 34, (1 << 34) + 3, u64::MAX] {
            let b = index >> 2;
            let block = philox4x32_10(
                [b as u32, (b >> 32) as u32, 0, 0],
                [0x89ab_cdef, 0x0123_4567],
            );
            assert_eq!(stream_word(seed, index), block[(index & 3) as usize]);
        }
    }

    /// Runs the vector Philox on `counters` (in groups of LANES) and `stream_blocks` from
    /// every block of `blocks`, on one ISA.
    struct VectorPhilox<'a> {
        counters: &'a [[u32; 4]],
        key: [u32; 2],
        blocks: &'a [u64],
    }

    impl Kernel for VectorPhilox<'_> {
        type Output = (Vec<[u32; 4]>, Vec<Vec<[u32; 4]>>);
        #[inline(always)]
        fn run<V: F32Vec>(self) -> Self::Output {
            let l = <V::U as U32Vec>::LANES;
            let mut out = Vec::new();
            for group in self.counters.chunks_exact(l) {
                let mut lanes = [[0u32; crate::simd::MAX_LANES]; 4];
                for (j, c) in group.iter().enumerate() {
                    for i in 0..4 {
                        lanes[i][j] = c[i];
                    }
                }
                let words = [
                    V::U::load(&lanes[0]),
                    V::U::load(&lanes[1]),
                    V::U::load(&lanes[2]),
                    V::U::load(&lanes[3]),
                ];
                let key = StreamKey::new(self.key);
                out.extend(lanes_of::<V::U>(philox4x32_10_vec(words, &key)));
            }
            let mut streams = Vec::new();
            for &b in self.blocks {
                // Every way of reaching block b: both vectors of a pair, and a block stream.
                let key = StreamKey::new(self.key);
                let [first, second] = stream_blocks::<V::U, 2>(b, &key);
                let mut lanes = lanes_of::<V::U>(first);
                lanes.extend(lanes_of::<V::U>(second));
                let seed = u64::from(self.key[0]) | u64::from(self.key[1]) << 32;
                let mut blocks = BlockStream::<V::U>::new(seed, b);
                for _ in 0..3 {
                    lanes.extend(lanes_of::<V::U>(blocks.next()));
                }
                streams.push(lanes);
            }
            (out, streams)
        }
    }

    #[inline(always)]
    fn lanes_of<U: U32Vec>(words: [U; 4]) -> Vec<[u32; 4]> {
        let mut stored = [[0u32; crate::simd::MAX_LANES]; 4];
        for (w, s) in words.iter().zip(stored.iter_mut()) {
            w.store(s);
        }
        (0..U::LANES)
            .map(|j| [stored[0][j], stored[1][j], stored[2][j], stored[3][j]])
            .collect()
    }

    #[test]
    fn vector_matches_scalar_on_every_isa() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 32) as u32
        };
        let mut counters: Vec<[u32; 4]> = (0..4096)
            .map(|_| [next(), next(), next(), next()])
            .collect();
        for (c, _, _) in KNOWN_ANSWERS {
            counters.push(c);
        }
        counters.resize(counters.len().div_ceil(16) * 16, [u32::MAX, 0, 1, u32::MAX]);
        let key = [next(), next()];
        let blocks = [
            0u64,
            1,
            12345,
            (1 << 32) - 16,
            (1 << 32) - 9,
            (1 << 32) - 8,
            (1 << 32) - 1,
            1 << 32,
            (1 << 62) - 1,
            (1 << 62) - 5,
        ];
        let kernel = || VectorPhilox {
            counters: &counters,
            key,
            blocks: &blocks,
        };
        let mut runs: Vec<(String, _)> = Isa::supported()
            .into_iter()
            .map(|isa| {
                let out = dispatch(SupportedIsa::new(isa).unwrap(), kernel());
                (format!("{isa:?}"), out)
            })
            .collect();
        // The lanes and registers of AVX-512, emulated, wherever the tests run.
        runs.push(("16 emulated lanes".into(), kernel().run::<Emulated<16>>()));
        runs.push(("8 emulated lanes".into(), kernel().run::<Emulated<8>>()));
        for (isa, (out, streams)) in runs {
            for (c, o) in counters.iter().zip(&out) {
                assert_eq!(*o, philox4x32_10(*c, key), "{isa}, counter {c:x?}");
            }
            for (&b, lanes) in blocks.iter().zip(&streams) {
                let l = lanes.len() / 5;
                for (j, o) in lanes.iter().enumerate() {
                    // Two vectors from stream_blocks, then three from a BlockStream.
                    let block = b + if j < 2 * l { j } else { j - 2 * l } as u64;
                    let want = philox4x32_10([block as u32, (block >> 32) as u32, 0, 0], key);
                    assert_eq!(*o, want, "{isa}, stream block {block}");
                }
            }
        }
    }
}
