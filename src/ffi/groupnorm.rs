//! The nk_groupnorm_* and nk_instancenorm_* entry points.
