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
