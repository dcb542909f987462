//! Group normalization.
