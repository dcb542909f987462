//! Dropout kernels: keep masks, inverted and alpha dropout (from a mask or from the stream),
//! channel dropout, and the multiplicative-noise variants (Gaussian, uniform).
//!
//! Every kernel works on a part of a call that starts at element `first` of the call and
//! reads the words of the stream from `offset + first` on (see [`super::philox`]). One vector
//! Philox evaluation gives the blocks of `LANES` consecutive counters, that is `4 * LANES`
//! consecutive words; a part whose first word is not a multiple of 4 takes its elements across
//! two such batches (`shift` words into the first). So a part gives the same values as the
//! same elements of one call over the whole tensor.
//!
//! Keep decisions travel as bits, LSB first, exactly as in the packed masks, whether they come
//! from the stream, from a mask, or are constant: forward, backward, with or without mask
//! therefore agree by construction.
//!
//! The data is processed group by group (`4 * LANES` elements for keep decisions): each
//! group's random values are drawn, then applied to its vectors at once, with the input
//! prefetched a few kilobytes ahead and, for large outputs, streaming stores. The arithmetic of
//! the generator and the traffic to memory thus proceed side by side.

use super::philox::BlockStream;
use crate::io::{RowIo, VectorMap, store_vector, unaligned_head};
use crate::simd::element::ElementIo;
use crate::simd::{F32Vec, Kernel, LINE_BYTES, U32Vec};

/// How far ahead of the group being computed its input is prefetched, in bytes.
const PREFETCH_AHEAD_BYTES: usize = 4096;

/// `SPREAD[m]` has bit `4k` set for each bit `k` of `m`.
const SPREAD: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut m = 0;
    while m < 256 {
        let mut k = 0;
        while k < 8 {
            if m & (1 << k) != 0 {
                table[m] |= 1 << (4 * k);
            }
            k += 1;
        }
        m += 1;
    }
    table
};

/// Bit `k` of `m` moved to bit `4k`, for the `LANES` low bits of `m`.
#[inline(always)]
fn spread<U: U32Vec>(m: u32) -> u64 {
    let low = u64::from(SPREAD[(m & 0xff) as usize]);
    if U::LANES <= 8 {
        low
    } else {
        low | u64::from(SPREAD[((m >> 8) & 0xff) as usize]) << 32
    }
}

/// The keep rule of a drop probability `p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    /// `p = 0`: every element is kept (no word needs to be read).
    All,
    /// `p = 1`: every element is dropped.
    None,
    /// Keep iff the word is at least this (`ceil(p * 2^24) << 8`, so that the test is
    /// `(r >> 8) >= ceil(p * 2^24)`).
    AtLeast(u32),
}

impl Keep {
    /// The rule of `p` in [0, 1] (checked by the caller; -0.0 is 0).
    pub(crate) fn new(p: f32) -> Keep {
        if p <= 0.0 {
            Keep::All
        } else if p >= 1.0 {
            Keep::None
        } else {
            // p * 2^24 is exact; p < 1 gives at most 2^24 - 1, so the shift cannot overflow.
            let t = (f64::from(p) * 16_777_216.0).ceil() as u32;
            Keep::AtLeast(t << 8)
        }
    }
}

/// Bits of `4 * LANES` consecutive elements at a time.
trait BitSource {
    fn next(&mut self) -> u64;
}

/// Keep bits drawn from the stream.
struct KeepStream<U> {
    blocks: BlockStream<U>,
    threshold: U,
    /// Words of the first batch before the first element (0 to 3).
    shift: u32,
    /// Bits of the last batch not yet returned, at the bottom.
    carry: u64,
}

impl<U: U32Vec> KeepStream<U> {
    #[inline(always)]
    fn new(seed: u64, first_word: u64, threshold: u32) -> Self {
        let mut stream = KeepStream {
            blocks: BlockStream::new(seed, first_word >> 2),
            threshold: U::splat(threshold),
            shift: (first_word & 3) as u32,
            carry: 0,
        };
        if stream.shift != 0 {
            stream.carry = stream.batch() >> stream.shift;
        }
        stream
    }

    /// Keep bits of the `4 * LANES` words of the next `LANES` blocks, in word order.
    #[inline(always)]
    fn batch(&mut self) -> u64 {
        let [w0, w1, w2, w3] = self.blocks.next();
        let t = self.threshold;
        spread::<U>(w0.ge_bits(t))
            | spread::<U>(w1.ge_bits(t)) << 1
            | spread::<U>(w2.ge_bits(t)) << 2
            | spread::<U>(w3.ge_bits(t)) << 3
    }
}

impl<U: U32Vec> BitSource for KeepStream<U> {
    #[inline(always)]
    fn next(&mut self) -> u64 {
        if self.shift == 0 {
            return self.batch();
        }
        let width = 4 * U::LANES as u32;
        let bits = self.batch();
        let out = self.carry | bits << (width - self.shift);
        self.carry = bits >> self.shift;
        if width < 64 {
            out & ((1 << width) - 1)
        } else {
            out
        }
    }
}

/// The same bits for every group.
#[derive(Clone, Copy)]
struct ConstantBits(u64);

impl BitSource for ConstantBits {
    #[inline(always)]
    fn next(&mut self) -> u64 {
        self.0
    }
}

/// Where the keep decisions of a part come from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Decisions<'a> {
    /// The stream of `seed`, the part's first element reading word `first_word`.
    Stream {
        seed: u64,
        first_word: u64,
        keep: Keep,
    },
    /// A packed mask whose bit `first_bit` holds the part's first element.
    Mask { mask: &'a [u8], first_bit: usize },
}

/// What happens to a kept and to a dropped element.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeepMap {
    /// Kept: `x * scale`; dropped: `+0.0`. Inverted dropout and every backward.
    Scale(f32),
    /// Kept: `x * a + b` (a product and a sum, each rounded, on every ISA); dropped: the
    /// constant `dropped`. Alpha dropout.
    Affine { a: f32, b: f32, dropped: f32 },
}

/// Writes the keep bits of `elements` elements into `mask` (whose first byte holds the first
/// element) in groups of `4 * LANES`, clearing the bits past the last element.
#[inline(always)]
fn write_bits(mask: &mut [u8], group: usize, bits: u64, elements: usize, lanes: usize) {
    let at = group * lanes / 2;
    let width = 4 * lanes;
    if elements == width {
        mask[at..at + width / 8].copy_from_slice(&bits.to_le_bytes()[..width / 8]);
    } else {
        let bits = bits & ((1u64 << elements) - 1);
        let bytes = elements.div_ceil(8);
        mask[at..at + bytes].copy_from_slice(&bits.to_le_bytes()[..bytes]);
    }
}

/// Kept and dropped values of one [`KeepMap`].
trait KeepOp<V: F32Vec> {
    fn kept(&self, x: V) -> V;
    fn dropped(&self, x: V) -> V;
}

#[derive(Clone, Copy)]
struct ScaleOp<V> {
    scale: V,
}

impl<V: F32Vec> KeepOp<V> for ScaleOp<V> {
    #[inline(always)]
    fn kept(&self, x: V) -> V {
        x.mul(self.scale)
    }
    #[inline(always)]
    fn dropped(&self, _: V) -> V {
        V::splat(0.0)
    }
}

#[derive(Clone, Copy)]
struct AffineOp<V> {
    a: V,
    b: V,
    dropped: V,
}

impl<V: F32Vec> KeepOp<V> for AffineOp<V> {
    #[inline(always)]
    fn kept(&self, x: V) -> V {
        x.mul(self.a).add(self.b)
    }
    #[inline(always)]
    fn dropped(&self, _: V) -> V {
        self.dropped
    }
}

/// Writes the keep bits of the next `elements` elements of `source` into `mask`
/// (`ceil(elements / 8)` bytes).
#[inline(always)]
fn fill_bits<V: F32Vec, S: BitSource>(source: &mut S, mask: &mut [u8], elements: usize) {
    let width = 4 * V::LANES;
    let mut group = 0;
    let mut left = elements;
    while left > 0 {
        let n = left.min(width);
        write_bits(mask, group, source.next(), n, V::LANES);
        group += 1;
        left -= n;
    }
}

/// Appends bits to a packed mask, from its first byte on, whatever their grouping.
struct MaskWriter<'m> {
    out: Option<&'m mut [u8]>,
    /// Bytes written so far.
    written: usize,
    /// Bits not yet written, at the bottom.
    pending: u128,
    count: usize,
}

impl<'m> MaskWriter<'m> {
    fn new(out: Option<&'m mut [u8]>) -> Self {
        MaskWriter {
            out,
            written: 0,
            pending: 0,
            count: 0,
        }
    }

    /// Appends the low `n <= 64` bits of `bits`.
    #[inline(always)]
    fn push(&mut self, bits: u64, n: usize) {
        let Some(out) = self.out.as_deref_mut() else {
            return;
        };
        let bits = if n < 64 { bits & ((1 << n) - 1) } else { bits };
        self.pending |= u128::from(bits) << self.count;
        self.count += n;
        if self.count >= 64 {
            let at = self.written;
            out[at..at + 8].copy_from_slice(&(self.pending as u64).to_le_bytes());
            self.written += 8;
            self.pending >>= 64;
            self.count -= 64;
        }
    }

    /// Writes the bits still pending; the unused high bits of the last byte are 0.
    fn finish(&mut self) {
        let Some(out) = self.out.as_deref_mut() else {
            return;
        };
        let bytes = self.count.div_ceil(8);
        let at = self.written;
        out[at..at + bytes].copy_from_slice(&self.pending.to_le_bytes()[..bytes]);
        self.written += bytes;
        self.pending = 0;
        self.count = 0;
    }
}

/// The random values of a pass, group by group.
trait Groups<V: F32Vec> {
    /// Vectors per group.
    const VECTORS: usize;
    /// Draws the next group, of which the first `elements` are real; keep decisions go to
    /// `mask`.
    fn next_group(&mut self, elements: usize, mask: &mut MaskWriter<'_>);
    /// Output vector `v` of the current group from input vector `x`.
    fn apply(&self, v: usize, x: V) -> V;
}

/// Runs `groups` over `io`: whole groups, then a partial one. With `STREAM` the output is
/// vector-aligned and written with streaming stores. Inputs are widened to `f32` lanes, outputs
/// rounded once to `Y`.
#[inline(always)]
fn run_groups<V: F32Vec, X: ElementIo, Y: ElementIo, G: Groups<V>, const STREAM: bool>(
    io: &mut RowIo<'_, X, Y>,
    groups: &mut G,
    mask: &mut MaskWriter<'_>,
) {
    let l = V::LANES;
    let w = G::VECTORS * l;
    // In elements of the input (for f32: 1024 elements ahead, one prefetch per 16).
    let ahead = io.input_ptr().wrapping_add(PREFETCH_AHEAD_BYTES / X::BYTES);
    let line = LINE_BYTES / X::BYTES;
    match io {
        RowIo::Separate(x, y) => {
            let full = x.len() / w * w;
            let (x_body, x_tail) = x.split_at(full);
            let (y_body, y_tail) = y.split_at_mut(full);
            for (k, (xs, ys)) in x_body
                .chunks_exact(w)
                .zip(y_body.chunks_exact_mut(w))
                .enumerate()
            {
                groups.next_group(w, mask);
                for at in (0..w).step_by(line) {
                    V::prefetch(ahead.wrapping_add(k * w + at));
                }
                for v in 0..G::VECTORS {
                    let y = groups.apply(v, V::read(&xs[v * l..]));
                    store_vector::<V, Y, STREAM>(y, &mut ys[v * l..]);
                }
            }
            if !x_tail.is_empty() {
                groups.next_group(x_tail.len(), mask);
                for v in 0..G::VECTORS {
                    let start = v * l;
                    if start >= x_tail.len() {
                        break;
                    }
                    let end = (start + l).min(x_tail.len());
                    let (xs, ys) = (&x_tail[start..end], &mut y_tail[start..end]);
                    if end - start == l {
                        groups.apply(v, V::read(xs)).write(ys);
                    } else {
                        groups.apply(v, V::read_partial(xs, 0.0)).write_partial(ys);
                    }
                }
            }
        }
        RowIo::InPlace(b) => {
            let full = b.len() / w * w;
            let (body, tail) = b.split_at_mut(full);
            for (k, bs) in body.chunks_exact_mut(w).enumerate() {
                groups.next_group(w, mask);
                for at in (0..w).step_by(line) {
                    V::prefetch(ahead.wrapping_add(k * w + at));
                }
                for v in 0..G::VECTORS {
                    let s = &mut bs[v * l..];
                    let y = groups.apply(v, V::read(s));
                    store_vector::<V, Y, STREAM>(y, s);
                }
            }
            if !tail.is_empty() {
                groups.next_group(tail.len(), mask);
                for v in 0..G::VECTORS {
                    let start = v * l;
                    if start >= tail.len() {
                        break;
                    }
                    let end = (start + l).min(tail.len());
                    let s = &mut tail[start..end];
                    if end - start == l {
                        groups.apply(v, V::read(s)).write(s);
                    } else {
                        groups.apply(v, V::read_partial(s, 0.0)).write_partial(s);
                    }
                }
            }
        }
    }
}

/// Elements before the first output element aligned to a whole vector of `Y` when streaming,
/// else 0.
#[inline(always)]
fn output_head<V: F32Vec, X, Y: ElementIo>(io: &RowIo<'_, X, Y>, stream: bool) -> usize {
    if !stream {
        return 0;
    }
    match io {
        RowIo::Separate(_, y) => unaligned_head::<V, Y>(y),
        RowIo::InPlace(b) => unaligned_head::<V, Y>(b),
    }
}

/// A whole pass: the first `head` elements with `head_groups` (plain stores), the rest with
/// `groups`, streamed if `stream` (then `head` aligns the output). Each of the two was started
/// at its own first element.
#[inline(always)]
fn run_pass<V: F32Vec, X: ElementIo, Y: ElementIo, G: Groups<V>>(
    io: &mut RowIo<'_, X, Y>,
    head: usize,
    head_groups: Option<G>,
    mut groups: G,
    stream: bool,
    mask: &mut MaskWriter<'_>,
) {
    if let Some(mut head_groups) = head_groups {
        run_groups::<V, X, Y, G, false>(&mut io.part(0..head), &mut head_groups, mask);
    }
    let n = io.len();
    let mut rest = io.part(head..n);
    if stream {
        run_groups::<V, X, Y, G, true>(&mut rest, &mut groups, mask);
        V::fence_streams();
    } else {
        run_groups::<V, X, Y, G, false>(&mut rest, &mut groups, mask);
    }
    mask.finish();
}

/// Keep-or-drop groups: bits from a source.
#[derive(Clone, Copy)]
struct KeepGroups<S, K> {
    source: S,
    op: K,
    bits: u64,
}

/// Keep groups from the stream of `seed`, the first element reading word `first_word`.
#[inline(always)]
fn keep_groups<V: F32Vec, K: KeepOp<V>>(
    seed: u64,
    first_word: u64,
    threshold: u32,
    op: K,
) -> KeepGroups<KeepStream<V::U>, K> {
    KeepGroups {
        source: KeepStream::new(seed, first_word, threshold),
        op,
        bits: 0,
    }
}

impl<V: F32Vec, S: BitSource, K: KeepOp<V>> Groups<V> for KeepGroups<S, K> {
    const VECTORS: usize = 4;

    #[inline(always)]
    fn next_group(&mut self, elements: usize, mask: &mut MaskWriter<'_>) {
        self.bits = self.source.next();
        mask.push(self.bits, elements);
    }

    #[inline(always)]
    fn apply(&self, v: usize, x: V) -> V {
        let bits = (self.bits >> (v * V::LANES)) as u32;
        V::select_bits(bits, self.op.kept(x), self.op.dropped(x))
    }
}

/// Bits `pos .. pos + 25` (at least) of a packed mask, at the bottom; bits past its end are 0.
#[inline(always)]
fn bits_at(mask: &[u8], pos: usize) -> u32 {
    let (byte, shift) = (pos / 8, pos % 8);
    let le: [u8; 4] = match mask.get(byte..byte + 4) {
        Some(bytes) => bytes.try_into().unwrap(),
        None => {
            let mut le = [0u8; 4];
            let rest = mask.get(byte..).unwrap_or(&[]);
            let n = rest.len().min(4);
            le[..n].copy_from_slice(&rest[..n]);
            le
        }
    };
    u32::from_le_bytes(le) >> shift
}

/// Keep-or-drop by the bits of a packed mask: element `i` of the part uses bit
/// `first_bit + i`.
struct ApplyBits<'b, K> {
    bits: &'b [u8],
    first_bit: usize,
    op: K,
}

impl<V: F32Vec, K: KeepOp<V>> VectorMap<V> for ApplyBits<'_, K> {
    #[inline(always)]
    fn apply(&self, x: V, i: usize, _: usize) -> V {
        let bits = bits_at(self.bits, self.first_bit + i);
        V::select_bits(bits, self.op.kept(x), self.op.dropped(x))
    }
}

/// Keep-or-drop with one decision for the whole part.
struct ApplyAll<K> {
    kept: bool,
    op: K,
}

impl<V: F32Vec, K: KeepOp<V>> VectorMap<V> for ApplyAll<K> {
    #[inline(always)]
    fn apply(&self, x: V, _: usize, _: usize) -> V {
        if self.kept {
            self.op.kept(x)
        } else {
            self.op.dropped(x)
        }
    }
}

/// Runs `f` over `io`, with streaming stores if `stream` (the caller fences).
#[inline(always)]
fn map<V: F32Vec, X: ElementIo, Y: ElementIo>(
    io: &mut RowIo<'_, X, Y>,
    f: &impl VectorMap<V>,
    stream: bool,
) {
    if stream {
        io.map_streaming(f)
    } else {
        io.map(f)
    }
}

/// Keep-or-drop over a contiguous part: inverted dropout, alpha dropout and their backward
/// passes, with the decisions from the stream or from a mask, and optionally stored as a mask
/// (`mask_out`, from the part's first element, `ceil(len / 8)` bytes). `stream`: write the
/// output with streaming stores. The data has elements `X` in, `Y` out.
pub(crate) struct KeepKernel<'a, X = f32, Y = X> {
    pub io: RowIo<'a, X, Y>,
    pub decisions: Decisions<'a>,
    pub map: KeepMap,
    pub mask_out: Option<&'a mut [u8]>,
    pub stream: bool,
}

impl<X: ElementIo, Y: ElementIo> KeepKernel<'_, X, Y> {
    #[inline(always)]
    fn with_op<V: F32Vec, K: KeepOp<V> + Copy>(mut self, op: K) {
        let stream = self.stream;
        let mut mask = MaskWriter::new(self.mask_out);
        let head = output_head::<V, _, _>(&self.io, stream);
        match self.decisions {
            Decisions::Mask {
                mask: bits,
                first_bit,
            } => {
                let f = ApplyBits {
                    bits,
                    first_bit,
                    op,
                };
                map(&mut self.io, &f, stream);
                if stream {
                    V::fence_streams();
                }
            }
            Decisions::Stream {
                seed,
                first_word,
                keep: Keep::AtLeast(t),
            } => {
                let head_groups = if head > 0 {
                    Some(keep_groups::<V, K>(seed, first_word, t, op))
                } else {
                    None
                };
                let groups = keep_groups::<V, K>(seed, first_word + head as u64, t, op);
                run_pass(&mut self.io, head, head_groups, groups, stream, &mut mask);
            }
            Decisions::Stream { keep, .. } => {
                let groups = KeepGroups {
                    source: ConstantBits(if keep == Keep::All { u64::MAX } else { 0 }),
                    op,
                    bits: 0,
                };
                run_pass(&mut self.io, head, Some(groups), groups, stream, &mut mask);
            }
        }
    }
}

impl<X: ElementIo, Y: ElementIo> Kernel for KeepKernel<'_, X, Y> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        match self.map {
            KeepMap::Scale(scale) => self.with_op(ScaleOp {
                scale: V::splat(scale),
            }),
            KeepMap::Affine { a, b, dropped } => self.with_op(AffineOp {
                a: V::splat(a),
                b: V::splat(b),
                dropped: V::splat(dropped),
            }),
        }
    }
}

/// How the rows of a channel dropout map to the bits of its (batch, channel) mask.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ChannelRows {
    /// Channels-first: row `r` is the spatial map of pair `r`, all of it kept or dropped.
    Maps,
    /// Channels innermost: row `r` holds the `channels` values of batch `r / spatial`, whose
    /// bits start at `(r / spatial) * channels`.
    Innermost { channels: usize, spatial: usize },
}

/// Channel dropout over whole rows of `row_len` elements, the first being row `first_row` of
/// the tensor: `x * scale` where the pair's bit of `mask` is 1, else `+0.0`.
pub(crate) struct ChannelKernel<'a, X = f32, Y = X> {
    pub io: RowIo<'a, X, Y>,
    pub first_row: usize,
    pub row_len: usize,
    pub rows: ChannelRows,
    pub mask: &'a [u8],
    pub scale: f32,
    pub stream: bool,
}

impl<X: ElementIo, Y: ElementIo> Kernel for ChannelKernel<'_, X, Y> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let rows = self.io.len() / self.row_len;
        let op = ScaleOp {
            scale: V::splat(self.scale),
        };
        for i in 0..rows {
            let r = self.first_row + i;
            let mut row = self.io.part(i * self.row_len..(i + 1) * self.row_len);
            match self.rows {
                ChannelRows::Maps => {
                    let kept = self.mask[r / 8] >> (r % 8) & 1 == 1;
                    map(&mut row, &ApplyAll { kept, op }, self.stream);
                }
                ChannelRows::Innermost { channels, spatial } => {
                    let f = ApplyBits {
                        bits: self.mask,
                        first_bit: r / spatial * channels,
                        op,
                    };
                    map(&mut row, &f, self.stream);
                }
            }
        }
        if self.stream {
            V::fence_streams();
        }
    }
}

/// The keep mask of `elements` elements, from the stream, into `mask` (`ceil(elements / 8)`
/// bytes; bits past the last element are 0).
pub(crate) struct MaskKernel<'a> {
    pub mask: &'a mut [u8],
    pub elements: usize,
    pub seed: u64,
    pub first_word: u64,
    pub keep: Keep,
}

impl Kernel for MaskKernel<'_> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let n = self.elements;
        match self.keep {
            Keep::AtLeast(t) => {
                let mut source = KeepStream::<V::U>::new(self.seed, self.first_word, t);
                fill_bits::<V, _>(&mut source, self.mask, n)
            }
            Keep::All => fill_bits::<V, _>(&mut ConstantBits(u64::MAX), self.mask, n),
            Keep::None => fill_bits::<V, _>(&mut ConstantBits(0), self.mask, n),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Multiplicative noise: y = x * factor, the factor drawn per element.

/// Element-ordered words of the stream, `4 * LANES` at a time.
struct WordStream<U> {
    blocks: BlockStream<U>,
    shift: usize,
    /// The previous batch, when `shift != 0`.
    previous: [U; 4],
}

/// The words of `LANES` blocks (lane `j` of word `i` = word `4j + i` from the first) in word
/// order: the first vector holds words `0 .. LANES`, and so on.
#[inline(always)]
fn word_order<U: U32Vec>(w: [U; 4]) -> [U; 4] {
    let (a_lo, a_hi) = w[0].zip(w[2]);
    let (b_lo, b_hi) = w[1].zip(w[3]);
    let (e0, e1) = a_lo.zip(b_lo);
    let (e2, e3) = a_hi.zip(b_hi);
    [e0, e1, e2, e3]
}

impl<U: U32Vec> WordStream<U> {
    #[inline(always)]
    fn new(seed: u64, first_word: u64) -> Self {
        let mut stream = WordStream {
            blocks: BlockStream::new(seed, first_word >> 2),
            shift: (first_word & 3) as usize,
            previous: [U::splat(0); 4],
        };
        if stream.shift != 0 {
            stream.previous = stream.batch();
        }
        stream
    }

    #[inline(always)]
    fn batch(&mut self) -> [U; 4] {
        word_order(self.blocks.next())
    }

    /// The words of the next `4 * LANES` elements, in element order.
    #[inline(always)]
    fn next(&mut self) -> [U; 4] {
        if self.shift == 0 {
            return self.batch();
        }
        let now = self.batch();
        let p = self.previous;
        let s = self.shift;
        self.previous = now;
        [
            p[0].lanes_from(p[1], s),
            p[1].lanes_from(p[2], s),
            p[2].lanes_from(p[3], s),
            p[3].lanes_from(now[0], s),
        ]
    }
}

/// `u = (r >> 8) * 2^-24` as `2u - 1`, exactly.
#[inline(always)]
fn centered<V: F32Vec>(r: V::U) -> V {
    V::from_i32(r.shr(8))
        .mul(V::splat(1.0 / 8_388_608.0))
        .sub(V::splat(1.0))
}

/// `ln(m * 2^-24)` for integer lanes `m` in [1, 2^24], to a few ulp.
///
/// `m = 2^e * (1 + f)` with `1 + f` in [sqrt(1/2), sqrt(2)); `ln(1 + f)` from
/// `s = f / (2 + f)`, `ln(1 + f) = 2 atanh(s) = f - f^2/2 + s (f^2/2 + R(s^2))`, where
/// `R(z) = 2z/3 + 2z^2/5 + 2z^3/7 + 2z^4/9` (the series of `2 atanh(s) - 2s`, divided by `s`,
/// truncated where `|s| <= 0.172` makes the rest below 1e-9 relative).
#[inline(always)]
fn ln_scaled<V: F32Vec>(m: V::U) -> V {
    const SQRT_HALF_BITS: u32 = 0x3f35_04f3;
    const ONE_BITS: u32 = 0x3f80_0000;
    // ln 2 in two parts: the first with few enough bits that e * LN2_HI is exact.
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = (std::f64::consts::LN_2 - 355.0 / 512.0) as f32;
    let bits = V::from_i32(m).to_bits();
    // Adding (1 - sqrt(1/2)) to the mantissa carries into the exponent exactly when the
    // mantissa is at least sqrt(2); the exponent field then gives e, and the mantissa, put back
    // over sqrt(1/2), is 1 + f.
    let moved = bits.add(V::U::splat(ONE_BITS - SQRT_HALF_BITS));
    let e = V::from_i32(moved.shr(23).sub(V::U::splat(127 + 24)));
    let mantissa = V::from_bits(
        moved
            .and(V::U::splat(0x007f_ffff))
            .add(V::U::splat(SQRT_HALF_BITS)),
    );
    let f = mantissa.sub(V::splat(1.0));
    let s = f.div(V::splat(2.0).add(f));
    let z = s.mul(s);
    let r = z.mul(V::splat(2.0 / 3.0).add(
        z.mul(V::splat(2.0 / 5.0).add(z.mul(V::splat(2.0 / 7.0).add(z.mul(V::splat(2.0 / 9.0)))))),
    ));
    let half_f2 = V::splat(0.5).mul(f).mul(f);
    let low = s.mul(half_f2.add(r)).add(e.mul(V::splat(LN2_LO)));
    e.mul(V::splat(LN2_HI)).add(f.sub(half_f2.sub(low)))
}

/// `c[0] + g * (c[1] + g * (...))`, by Horner's rule with separate products and sums.
#[inline(always)]
fn polynomial<V: F32Vec>(g: V, c: &[f32]) -> V {
    let mut acc = V::splat(c[c.len() - 1]);
    for &coefficient in c[..c.len() - 1].iter().rev() {
        acc = V::splat(coefficient).add(g.mul(acc));
    }
    acc
}

/// `cos(2 pi k 2^-24)` for integer lanes `k` in [0, 2^24), to a few ulp.
///
/// `k 2^-24 = q/4 + t` with integer `q` (0 to 4) and `|t| <= 1/8`, both exact; then
/// `cos(2 pi (q/4 + t))` is `cos(2 pi t)`, `-sin(2 pi t)`, `-cos`, `sin` for `q mod 4` = 0 to
/// 3, with Taylor polynomials in `t` (whose terms beyond the last kept are below 3e-9
/// relative for `|2 pi t| <= pi/4`).
#[inline(always)]
fn cos_turns<V: F32Vec>(k: V::U) -> V {
    const TAU: f64 = std::f64::consts::TAU;
    // Coefficients of t^n: (-1)^(n/2) (2 pi)^n / n! for the cosine (even n) and the sine
    // (odd n).
    const fn coefficient(n: i32) -> f32 {
        let mut c = 1.0f64;
        let mut i = 1;
        while i <= n {
            c *= TAU / i as f64;
            i += 1;
        }
        (if (n / 2) % 2 == 1 { -c } else { c }) as f32
    }
    const SIN: [f32; 5] = [
        coefficient(1),
        coefficient(3),
        coefficient(5),
        coefficient(7),
        coefficient(9),
    ];
    const COS: [f32; 5] = [
        coefficient(2),
        coefficient(4),
        coefficient(6),
        coefficient(8),
        coefficient(10),
    ];
    let q = k.add(V::U::splat(1 << 21)).shr(22);
    let t = V::from_i32(k.sub(q.shl(22))).mul(V::splat(1.0 / 16_777_216.0));
    let g = t.mul(t);
    let sin = t.mul(polynomial::<V>(g, &SIN));
    let cos = V::splat(1.0).add(g.mul(polynomial::<V>(g, &COS)));
    let odd = V::U::splat(0).sub(q.and(V::U::splat(1)));
    let (sin, cos) = (sin.to_bits(), cos.to_bits());
    let chosen = cos.xor(cos.xor(sin).and(odd));
    let sign = q.add(V::U::splat(1)).and(V::U::splat(2)).shl(30);
    V::from_bits(chosen.xor(sign))
}

/// The Gaussian factor `1 + sigma * sqrt(-2 ln u1) * cos(2 pi u2)` of words `r0`, `r1`, with
/// `u1 = ((r0 >> 8) + 1) 2^-24` and `u2 = (r1 >> 8) 2^-24`. Only products, sums, a quotient and
/// a square root, each correctly rounded, so every ISA gives the same bits.
#[inline(always)]
fn gaussian_factor<V: F32Vec>(r0: V::U, r1: V::U, sigma: V) -> V {
    let ln_u1 = ln_scaled::<V>(r0.shr(8).add(V::U::splat(1)));
    let radius = V::splat(-2.0).mul(ln_u1).sqrt();
    V::splat(1.0).add(sigma.mul(radius).mul(cos_turns::<V>(r1.shr(8))))
}

/// Element-ordered noise factors, `VECTORS * LANES` elements at a time.
trait Factors<V: F32Vec> {
    const VECTORS: usize;
    /// The factors of the next group, in `out[..VECTORS]`.
    fn next(&mut self, out: &mut [V; 4]);
}

/// Uniform ("Uout") noise: `factor = 1 + beta * (2u - 1)`, one word per element.
struct UniformFactors<V: F32Vec> {
    words: WordStream<V::U>,
    beta: V,
}

impl<V: F32Vec> Factors<V> for UniformFactors<V> {
    const VECTORS: usize = 4;

    #[inline(always)]
    fn next(&mut self, out: &mut [V; 4]) {
        let words = self.words.next();
        let one = V::splat(1.0);
        for (f, w) in out.iter_mut().zip(words) {
            *f = one.add(self.beta.mul(centered::<V>(w)));
        }
    }
}

/// Gaussian factors, two words per element: each block holds two elements (words 0, 1 and
/// words 2, 3).
struct GaussianFactors<V: F32Vec> {
    blocks: BlockStream<V::U>,
    /// 1 when the part starts at an odd element: the first factor of a batch is skipped.
    shift: usize,
    sigma: V,
    previous: [V::U; 2],
}

impl<V: F32Vec> GaussianFactors<V> {
    #[inline(always)]
    fn new(seed: u64, first_element: u64, sigma: f32) -> Self {
        let zero = V::U::splat(0);
        let mut factors = GaussianFactors {
            blocks: BlockStream::new(seed, first_element >> 1),
            shift: (first_element & 1) as usize,
            sigma: V::splat(sigma),
            previous: [zero, zero],
        };
        if factors.shift != 0 {
            factors.previous = factors.batch();
        }
        factors
    }

    /// The factors of the `2 * LANES` elements of the next `LANES` blocks, in element order.
    #[inline(always)]
    fn batch(&mut self) -> [V::U; 2] {
        let [w0, w1, w2, w3] = self.blocks.next();
        let even = gaussian_factor::<V>(w0, w1, self.sigma);
        let odd = gaussian_factor::<V>(w2, w3, self.sigma);
        let (first, second) = even.to_bits().zip(odd.to_bits());
        [first, second]
    }
}

impl<V: F32Vec> Factors<V> for GaussianFactors<V> {
    const VECTORS: usize = 2;

    #[inline(always)]
    fn next(&mut self, out: &mut [V; 4]) {
        let now = self.batch();
        let bits = if self.shift == 0 {
            now
        } else {
            let p = self.previous;
            self.previous = now;
            [p[0].lanes_from(p[1], 1), p[1].lanes_from(now[0], 1)]
        };
        out[0] = V::from_bits(bits[0]);
        out[1] = V::from_bits(bits[1]);
    }
}

/// Noise groups: `y = x * factor`.
struct FactorGroups<V, F> {
    factors: F,
    current: [V; 4],
}

impl<V: F32Vec, F: Factors<V>> FactorGroups<V, F> {
    #[inline(always)]
    fn new(factors: F) -> Self {
        FactorGroups {
            factors,
            current: [V::splat(1.0); 4],
        }
    }
}

impl<V: F32Vec, F: Factors<V>> Groups<V> for FactorGroups<V, F> {
    const VECTORS: usize = F::VECTORS;

    #[inline(always)]
    fn next_group(&mut self, _: usize, _: &mut MaskWriter<'_>) {
        self.factors.next(&mut self.current);
    }

    #[inline(always)]
    fn apply(&self, v: usize, x: V) -> V {
        x.mul(self.current[v])
    }
}

/// Uniform factors from the stream of `seed`, the first element reading word `first_word`.
#[inline(always)]
fn uniform_factors<V: F32Vec>(seed: u64, first_word: u64, beta: f32) -> UniformFactors<V> {
    UniformFactors {
        words: WordStream::new(seed, first_word),
        beta: V::splat(beta),
    }
}

/// `y = x * (1 + beta * (2u - 1))` over a contiguous part whose first element reads word
/// `first_word`. Forward and backward alike.
pub(crate) struct UniformKernel<'a, X = f32, Y = X> {
    pub io: RowIo<'a, X, Y>,
    pub seed: u64,
    pub first_word: u64,
    pub beta: f32,
    pub stream: bool,
}

impl<X: ElementIo, Y: ElementIo> Kernel for UniformKernel<'_, X, Y> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let head = output_head::<V, _, _>(&self.io, self.stream);
        let head_groups = if head > 0 {
            Some(FactorGroups::new(uniform_factors::<V>(
                self.seed,
                self.first_word,
                self.beta,
            )))
        } else {
            None
        };
        let at = self.first_word + head as u64;
        let groups = FactorGroups::new(uniform_factors::<V>(self.seed, at, self.beta));
        let mut no_mask = MaskWriter::new(None);
        run_pass(
            &mut self.io,
            head,
            head_groups,
            groups,
            self.stream,
            &mut no_mask,
        );
    }
}

/// `y = x * e`, `e ~ N(1, sigma^2)` by Box-Muller over a contiguous part whose first element
/// is element `first_element` of the stream (reading words `2 * first_element` and
/// `2 * first_element + 1`). Forward and backward alike.
pub(crate) struct GaussianKernel<'a, X = f32, Y = X> {
    pub io: RowIo<'a, X, Y>,
    pub seed: u64,
    pub first_element: u64,
    pub sigma: f32,
    pub stream: bool,
}

impl<X: ElementIo, Y: ElementIo> Kernel for GaussianKernel<'_, X, Y> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let head = output_head::<V, _, _>(&self.io, self.stream);
        let head_groups = if head > 0 {
            let factors = GaussianFactors::<V>::new(self.seed, self.first_element, self.sigma);
            Some(FactorGroups::new(factors))
        } else {
            None
        };
        let at = self.first_element + head as u64;
        let groups = FactorGroups::new(GaussianFactors::<V>::new(self.seed, at, self.sigma));
        let mut no_mask = MaskWriter::new(None);
        run_pass(
            &mut self.io,
            head,
            head_groups,
            groups,
            self.stream,
            &mut no_mask,
        );
    }
}

#[cfg(test)]
mod tests {
    //! The kernels with 16 emulated lanes (the groups, keep words and Philox steps of AVX-512)
    //! against the portable backend, bit for bit; the operations are checked against a plain
    //! reference in `ops::dropout`.

    use super::*;
    use crate::kernels::philox::stream_word;
    use crate::simd::emulated::Emulated;
    use crate::simd::{Isa, SupportedIsa, dispatch};

    #[derive(Clone, Copy, Debug)]
    enum Backend {
        Portable,
        Sixteen,
    }

    impl Backend {
        fn run<K: Kernel>(self, kernel: K) -> K::Output {
            match self {
                Backend::Portable => dispatch(SupportedIsa::new(Isa::Portable).unwrap(), kernel),
                Backend::Sixteen => kernel.run::<Emulated<16>>(),
            }
        }
    }

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (stream_word(99, i as u64) as f32 / u32::MAX as f32 - 0.5) * 4.0)
            .collect()
    }

    const SIZES: [usize; 8] = [1, 15, 64, 65, 127, 1000, 4099, 5000];
    const FIRST_WORDS: [u64; 5] = [0, 1, 2, 3, (1 << 34) - 37];

    /// `f(backend, x, y)` on both backends with the output at `shift` floats past an aligned
    /// address (so that streaming starts with a head); the outputs must be equal bit for bit.
    fn same_on_both<T: PartialEq + std::fmt::Debug>(
        n: usize,
        f: impl Fn(Backend, &[f32], &mut [f32]) -> T,
    ) {
        let x = data(n);
        let mut results = Vec::new();
        for backend in [Backend::Portable, Backend::Sixteen] {
            for shift in [0, 3] {
                let mut buffer = vec![0f32; n + 32];
                let base = buffer.as_ptr() as usize % 64 / 4;
                let start = (16 - base) % 16 + shift;
                let y = &mut buffer[start..start + n];
                let extra = f(backend, &x, y);
                let bits: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                results.push((bits, extra));
            }
        }
        for r in &results[1..] {
            assert!(r == &results[0], "n {n}: {:?}", r.1);
        }
    }

    #[test]
    fn keep_kernels_match_with_sixteen_lanes() {
        let maps = [
            KeepMap::Scale(1.25),
            KeepMap::Affine {
                a: 1.5,
                b: -0.25,
                dropped: -2.0,
            },
        ];
        for n in SIZES {
            for first_word in FIRST_WORDS {
                for keep in [Keep::new(0.3), Keep::All, Keep::None] {
                    for map in maps {
                        for stream in [false, true] {
                            same_on_both(n, |backend, x, y| {
                                let mut mask = vec![0u8; n.div_ceil(8)];
                                let decisions = Decisions::Stream {
                                    seed: 7,
                                    first_word,
                                    keep,
                                };
                                backend.run(KeepKernel {
                                    io: RowIo::Separate(x, y),
                                    decisions,
                                    map,
                                    mask_out: Some(&mut mask),
                                    stream,
                                });
                                let mut alone = vec![0u8; n.div_ceil(8)];
                                backend.run(MaskKernel {
                                    mask: &mut alone,
                                    elements: n,
                                    seed: 7,
                                    first_word,
                                    keep,
                                });
                                assert_eq!(mask, alone, "{backend:?} n {n} word {first_word}");
                                mask
                            });
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn mask_decisions_match_with_sixteen_lanes() {
        for n in SIZES {
            let mask: Vec<u8> = (0..n.div_ceil(8) + 2)
                .map(|i| (i * 37 % 256) as u8)
                .collect();
            for first_bit in [0, 3, 8, 13] {
                for stream in [false, true] {
                    same_on_both(n, |backend, x, y| {
                        backend.run(KeepKernel {
                            io: RowIo::Separate(x, y),
                            decisions: Decisions::Mask {
                                mask: &mask,
                                first_bit,
                            },
                            map: KeepMap::Scale(2.0),
                            mask_out: None,
                            stream,
                        })
                    });
                }
            }
        }
    }

    #[test]
    fn noise_kernels_match_with_sixteen_lanes() {
        for n in SIZES {
            for first in FIRST_WORDS {
                for stream in [false, true] {
                    same_on_both(n, |backend, x, y| {
                        backend.run(UniformKernel {
                            io: RowIo::Separate(x, y),
                            seed: 5,
                            first_word: first,
                            beta: 0.75,
                            stream,
                        })
                    });
                    same_on_both(n, |backend, x, y| {
                        backend.run(GaussianKernel {
                            io: RowIo::Separate(x, y),
                            seed: 5,
                            first_element: first,
                            sigma: 0.6,
                            stream,
                        })
                    });
                }
            }
        }
    }

    #[test]
    fn channel_kernels_match_with_sixteen_lanes() {
        let mask: Vec<u8> = (0..64).map(|i| (i * 91 % 256) as u8).collect();
        for (rows, row_len, kind) in [
            (6, 1030, ChannelRows::Maps),
            (9, 7, ChannelRows::Maps),
            (
                12,
                37,
                ChannelRows::Innermost {
                    channels: 37,
                    spatial: 3,
                },
            ),
        ] {
            for first_row in [0, 5] {
                for stream in [false, true] {
                    same_on_both(rows * row_len, |backend, x, y| {
                        backend.run(ChannelKernel {
                            io: RowIo::Separate(x, y),
                            first_row,
                            row_len,
                            rows: kind,
                            mask: &mask,
                            scale: 3.0,
                            stream,
                        })
                    });
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // bf16 and f16 data: the same kernels, f32 lanes inside.

    /// The bits of an element, to compare outputs NaN included.
    trait Bits: ElementIo {
        fn bits(self) -> u32;
    }
    impl Bits for f32 {
        fn bits(self) -> u32 {
            self.to_bits()
        }
    }
    impl Bits for half::bf16 {
        fn bits(self) -> u32 {
            u32::from(self.to_bits())
        }
    }
    impl Bits for half::f16 {
        fn bits(self) -> u32 {
            u32::from(self.to_bits())
        }
    }

    /// A kernel to run on data of any element type.
    #[derive(Clone, Copy, Debug)]
    enum Which {
        Keep(Keep, KeepMap, u64),
        FromMask(usize),
        Uniform(u64),
        Gaussian(u64),
        Channel(ChannelRows, usize),
    }

    const MASK: [u8; 700] = {
        let mut m = [0u8; 700];
        let mut i = 0;
        while i < 700 {
            m[i] = (i * 37 % 256) as u8;
            i += 1;
        }
        m
    };

    /// Runs `which` over `io` on `backend`; returns the mask it wrote, if any.
    fn run_on<E: ElementIo>(
        backend: Backend,
        which: Which,
        io: RowIo<'_, E>,
        stream: bool,
    ) -> Vec<u8> {
        let n = io.len();
        let mut mask = vec![0u8; n.div_ceil(8)];
        match which {
            Which::Keep(keep, map, first_word) => backend.run(KeepKernel {
                io,
                decisions: Decisions::Stream {
                    seed: 11,
                    first_word,
                    keep,
                },
                map,
                mask_out: Some(&mut mask),
                stream,
            }),
            Which::FromMask(first_bit) => backend.run(KeepKernel {
                io,
                decisions: Decisions::Mask {
                    mask: &MASK,
                    first_bit,
                },
                map: KeepMap::Scale(1.25),
                mask_out: None,
                stream,
            }),
            Which::Uniform(first_word) => backend.run(UniformKernel {
                io,
                seed: 12,
                first_word,
                beta: 0.75,
                stream,
            }),
            Which::Gaussian(first_element) => backend.run(GaussianKernel {
                io,
                seed: 13,
                first_element,
                sigma: 0.6,
                stream,
            }),
            Which::Channel(rows, row_len) => backend.run(ChannelKernel {
                io,
                first_row: 1,
                row_len,
                rows,
                mask: &MASK,
                scale: 1.25,
                stream,
            }),
        }
        mask
    }

    /// Inputs of type `E` with NaN, infinities, zeros, subnormals of the type, values near the
    /// f16 overflow and the largest finite values among ordinary data.
    fn half_data<E: ElementIo>(n: usize) -> Vec<E> {
        let specials = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            65504.0,
            65520.0,
            -65504.0,
            52429.0,
            5.960_464_5e-8,
            -1.788_139_3e-7,
            6.097_555e-5,
            1e-40,
            -3e-39,
            3.389_531_4e38,
            -1.0e38,
        ];
        data(n)
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                E::from_f32(if i % 5 == 2 {
                    specials[i / 5 % specials.len()]
                } else {
                    v
                })
            })
            .collect()
    }

    /// `which` on data of type `E`, out of place and in place, with the output at `shift`
    /// elements past an address aligned to 64 bytes, streamed or not, on both backends: each
    /// output element is `E::from_f32` of the f32 kernel's output on the widened input, and the
    /// masks are the f32 kernel's.
    fn half_matches_f32<E: Bits>(which: Which, n: usize) {
        let x = half_data::<E>(n);
        let wide: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        for backend in [Backend::Portable, Backend::Sixteen] {
            for stream in [false, true] {
                let mut y32 = vec![0f32; n];
                let mask32 = run_on(backend, which, RowIo::Separate(&wide, &mut y32), stream);
                let want: Vec<u32> = y32.iter().map(|&v| E::from_f32(v).bits()).collect();
                for shift in [0, 3] {
                    for in_place in [false, true] {
                        let mut buffer = vec![E::from_f32(7.0); n + 64];
                        let base = buffer.as_ptr() as usize % 64 / E::BYTES;
                        let start = (64 / E::BYTES - base) % (64 / E::BYTES) + shift;
                        let y = &mut buffer[start..start + n];
                        let mask = if in_place {
                            y.copy_from_slice(&x);
                            run_on(backend, which, RowIo::InPlace(y), stream)
                        } else {
                            run_on(backend, which, RowIo::Separate(&x, y), stream)
                        };
                        let got: Vec<u32> = y.iter().map(|v| v.bits()).collect();
                        let what = format!(
                            "{} {which:?} n {n} {backend:?} stream {stream} shift {shift} \
                             in place {in_place}",
                            std::any::type_name::<E>()
                        );
                        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
                            panic!(
                                "{what}: element {i}: {:#x} vs {:#x} (f32 {:e} of {:e})",
                                got[i], want[i], y32[i], wide[i]
                            );
                        }
                        assert_eq!(mask, mask32, "{what}: mask");
                        assert!(buffer[..start].iter().all(|v| v.to_f32() == 7.0), "{what}");
                        assert!(
                            buffer[start + n..].iter().all(|v| v.to_f32() == 7.0),
                            "{what}"
                        );
                    }
                }
            }
        }
    }

    fn kernels_on<E: Bits>() {
        let affine = KeepMap::Affine {
            a: 1.5,
            b: -0.25,
            dropped: -2.0,
        };
        for n in [1, 15, 64, 65, 127, 1000, 4099] {
            for first in [0, 3, (1 << 34) - 37] {
                for keep in [Keep::new(0.3), Keep::All, Keep::None] {
                    half_matches_f32::<E>(Which::Keep(keep, KeepMap::Scale(1.25), first), n);
                    half_matches_f32::<E>(Which::Keep(keep, affine, first), n);
                }
                half_matches_f32::<E>(Which::Uniform(first), n);
                half_matches_f32::<E>(Which::Gaussian(first), n);
            }
            half_matches_f32::<E>(Which::FromMask(5), n);
        }
        for (rows, row_len, kind) in [
            (6, 1030, ChannelRows::Maps),
            (9, 7, ChannelRows::Maps),
            (
                12,
                37,
                ChannelRows::Innermost {
                    channels: 37,
                    spatial: 3,
                },
            ),
        ] {
            half_matches_f32::<E>(Which::Channel(kind, row_len), rows * row_len);
        }
    }

    #[test]
    fn bf16_kernels_give_the_f32_kernels_rounded() {
        kernels_on::<half::bf16>();
    }

    #[test]
    fn f16_kernels_give_the_f32_kernels_rounded() {
        kernels_on::<half::f16>();
    }

    #[test]
    fn f32_kernels_are_their_own_rounding() {
        // The harness itself on f32: the in-place, shifted and streamed runs give the aligned
        // out-of-place bits.
        half_matches_f32::<f32>(Which::Keep(Keep::new(0.3), KeepMap::Scale(1.25), 3), 1000);
        half_matches_f32::<f32>(Which::Gaussian(1), 1000);
    }
}
