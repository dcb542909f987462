//! The safe Rust API: one module per operation family. Each operation validates everything
//! before it writes anything, splits the work into parts fixed by the shape alone, and runs the
//! kernels on them.

pub mod batchnorm;
pub mod dropout;
pub mod groupnorm;
pub mod instancenorm;
pub mod layernorm;
pub mod rmsnorm;
