//! Layer normalization and weight standardization.
