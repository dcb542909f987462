//! Plain float64 reference of the batch-norm backward passes.
