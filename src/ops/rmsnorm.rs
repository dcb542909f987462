//! RMS normalization.
