//! The safe Rust API: one module per operation family. Each operation validates everything
//! before it writes anything, splits the work into parts fixed by the shape alone, and runs the
//! kernels on them.

pub mod batchnorm;
pub mod dropout;
pub mod groupnorm;
pub mod instancenorm;
pub mod layernorm;
pub mod rmsnorm;

/// Approximate elements per parallel task of the element-wise and row-wise passes of every
/// operation (a part small enough to balance two to a few dozen threads, large enough that a
/// task's overhead is noise).
pub(crate) const TASK_ELEMENTS: usize = 1 << 15;
