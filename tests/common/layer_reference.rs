//! Plain float64 reference of layer norm, RMS norm and weight standardization.
