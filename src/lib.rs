//! normkit: CPU kernels for batch normalization, its alternatives and dropout, with a stable C
//! ABI (`include/normkit.h`) over a safe Rust API.
//!
//! The data path of a call: [`ffi`] (C entry points: pointer, alignment and alias checks, panic
//! boundary) → [`ops`] (the safe API: semantics and the work split over the context's threads) →
//! `kernels` (each kernel written once over a small vector trait) → `simd` (one backend per ISA,
//! chosen at run time).
//!
//! ```
//! use normkit::{Context, InOut, Layout, Shape};
//! use normkit::batchnorm::{self, Affine};
//!
//! let ctx = Context::new(1).unwrap();
//! let shape = Shape::new(2, 3, 4, Layout::Ncs);
//! let x: Vec<f32> = (0..24).map(|i| i as f32).collect();
//! let mut y = vec![0.0; 24];
//! let (mean, var) = ([1.0, 2.0, 3.0], [1.0, 4.0, 9.0]);
//! batchnorm::forward_inference(&ctx, shape, InOut::separate(&x, &mut y).unwrap(),
//!     Affine::default(), &mean, &var, 0.0, 0).unwrap();
//! assert_eq!(y[4], (4.0 - 2.0) / 2.0);
//! ```

mod context;
mod error;
pub mod ffi;
mod io;
mod kernels;
mod ops;
mod shape;
mod simd;

pub use context::{Context, Executor};
pub use error::{Error, ErrorKind, Result};
pub use io::{BackwardIo, InOut};
pub use kernels::moments::Moments;
pub use ops::{batchnorm, dropout, groupnorm, instancenorm, layernorm, rmsnorm};
pub use shape::{Layout, Shape};
pub use simd::Isa;
pub use simd::element::{Element, bf16, f16};

/// The library version: major, minor, patch.
pub const VERSION: (u32, u32, u32) = (0, 1, 0);
