//! Group-norm kernels: statistics per (batch, group) and the normalize pass, both layouts.
