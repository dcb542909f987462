//! SIMD kernels, each written once over [`crate::simd::F32Vec`] and run through
//! [`crate::simd::dispatch`]. Kernels know nothing of threads or C: the `ops` layer splits the
//! work and calls them on parts of the tensors.

pub(crate) mod backward;
pub(crate) mod dropout;
pub(crate) mod fused;
pub(crate) mod groupnorm;
pub(crate) mod moments;
pub(crate) mod normalize;
pub(crate) mod philox;
pub(crate) mod rownorm;
pub(crate) mod sums;

/// Floats of the stack buffer of [`with_line_arrays`]: the forward's three arrays of `2 * 64 +
/// MAX_LANES` entries (the per-channel parameters of up to 64 channels, extended for the
/// channels-innermost kernels; the backward's four fit up to 48), so that calls of few channels
/// do not allocate. No larger: the buffer is zeroed on every call, and tiny calls pay for it.
const LINE_STACK_FLOATS: usize = 448;
const _: () = assert!(LINE_STACK_FLOATS >= 3 * (2 * 64 + crate::simd::MAX_LANES));

/// The stack buffer of [`with_line_arrays`], on a cache line.
#[repr(C, align(64))]
struct LineStack([f32; LINE_STACK_FLOATS]);

/// Runs `then` on `K` zeroed arrays of `len` floats, each starting on a cache line (on the
/// stack when they fit [`LINE_STACK_FLOATS`]). Per-channel parameters live there: a kernel
/// loads them beside every vector of data, and a load that spans two lines costs two, which
/// out of memory, beside streaming stores, made a channels-innermost pass take up to twice as
/// long.
pub(crate) fn with_line_arrays<const K: usize, R>(
    len: usize,
    then: impl FnOnce([&mut [f32]; K]) -> R,
) -> R {
    const LINE_FLOATS: usize = crate::simd::LINE_BYTES / 4;
    const _: () = assert!(std::mem::align_of::<LineStack>() == crate::simd::LINE_BYTES);
    let stride = len.next_multiple_of(LINE_FLOATS);
    let total = K * stride;
    let mut stack = LineStack([0.0; LINE_STACK_FLOATS]);
    // Larger arrays come from this thread's scratch (see `crate::scratch`): a fresh allocation
    // of thousands of channels' parameters per call costs page faults when the allocator gives
    // its pages back between calls.
    let mut heap;
    let buf: &mut [f32] = if total <= LINE_STACK_FLOATS {
        &mut stack.0[..total]
    } else {
        heap = crate::scratch::take(total + LINE_FLOATS - 1, 0f32);
        // Floats to skip to the first line boundary (the address is a multiple of 4).
        let skip = (heap.as_ptr() as usize).wrapping_neg() % crate::simd::LINE_BYTES / 4;
        &mut heap[skip..skip + total]
    };
    let mut rest = buf;
    let arrays = std::array::from_fn(|_| {
        let (array, tail) = std::mem::take(&mut rest).split_at_mut(stride);
        rest = tail;
        &mut array[..len]
    });
    then(arrays)
}

/// Repeats the first `period` entries of `values` over the rest of it (`values[i] =
/// values[i % period]`), by doubling copies: how per-channel parameters are extended to the
/// `2 * C + MAX_LANES` entries the channels-innermost kernels read at any channel offset.
pub(crate) fn extend_cyclic(values: &mut [f32], period: usize) {
    if period == 0 {
        return;
    }
    let mut filled = period.min(values.len());
    while filled < values.len() {
        let n = filled.min(values.len() - filled);
        values.copy_within(0..n, filled);
        filled += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every array starts on a cache line, is zeroed, has the asked length and lies apart from
    /// the others, on the stack (small lengths) and on the heap (large ones).
    #[test]
    fn line_arrays_are_aligned_zeroed_and_apart() {
        for len in [0, 1, 15, 16, 17, 144, 145, 1000] {
            with_line_arrays(len, |arrays: [&mut [f32]; 4]| {
                let mut spans = Vec::new();
                for a in arrays {
                    assert_eq!(a.len(), len);
                    assert_eq!(
                        a.as_ptr() as usize % crate::simd::LINE_BYTES,
                        0,
                        "len {len}"
                    );
                    assert!(a.iter().all(|&v| v == 0.0));
                    a.fill(1.0);
                    let start = a.as_ptr() as usize;
                    spans.push(start..start + 4 * len);
                }
                for (i, a) in spans.iter().enumerate() {
                    for b in &spans[i + 1..] {
                        assert!(a.end <= b.start || b.end <= a.start);
                    }
                }
            });
        }
    }
}
