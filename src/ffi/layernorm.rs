//! The nk_layernorm_*, nk_rmsnorm_* and nk_weight_standardize entry points.
