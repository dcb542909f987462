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
