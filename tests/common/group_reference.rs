//! Plain float64 reference of group and instance norm.
