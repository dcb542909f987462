//! Batch-norm backward kernels: per-channel gradient reductions and the input gradient.
