//! Row-wise normalization kernels: layer norm, RMS norm and weight standardization.
