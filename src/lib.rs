//! normkit: CPU kernels for batch normalization, its alternatives and dropout, with a stable C
//! ABI (`include/normkit.h`) over a safe Rust API.
//!
//! The data path of a call: `ffi` (the C entry points, built with the default `capi` feature:
//! pointer, alignment and alias checks, panic boundary) → `ops` (the safe API of this crate:
//! semantics and the work split over the context's threads) → `kernels` (each kernel written
//! once over a small vector trait) → `simd` (one backend per ISA, chosen at run time).
//!
//! The C functions are not part of the Rust API: a Rust program calls the modules below
//! ([`batchnorm`], [`layernorm`], [`rmsnorm`], [`groupnorm`], [`instancenorm`], [`dropout`]) on
//! a [`Context`]. With the default `capi` feature the `nk_*` symbols are still compiled in (they
//! are what `libnormkit.a` and `libnormkit.so` export); `default-features = false` leaves them
//! out.
//!
//! ```
//! use normkit::{Context, InOut, Layout, Shape};
//! use normkit::batchnorm::{self, Activation, Affine};
//!
//! let ctx = Context::new(1).unwrap();
//! let shape = Shape::new(2, 3, 4, Layout::Ncs);
//! let x: Vec<f32> = (0..24).map(|i| i as f32).collect();
//! let mut y = vec![0.0; 24];
//! let (mean, var) = ([1.0, 2.0, 3.0], [1.0, 4.0, 9.0]);
//! batchnorm::forward_inference(&ctx, shape, InOut::separate(&x, &mut y).unwrap(),
//!     Affine::default(), &mean, &var, 0.0, Activation::Identity).unwrap();
//! assert_eq!(y[4], (4.0 - 2.0) / 2.0);
//! ```

#![warn(missing_docs)]

mod context;
mod error;
// The C functions, exported under their C names. Also public as Rust items, hidden and not part
// of the API, for the crate's own tests, benchmarks and fuzz targets: so that they link the same
// library as every other build. Its doc comments are written for the C header (cbindgen copies
// the functions') and for readers of the source: C notation such as `[c_out][fan_in]` and links
// to the module's private helpers, which rustdoc would check as public documentation.
#[cfg(feature = "capi")]
#[doc(hidden)]
#[allow(
    missing_docs,
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links
)]
pub mod ffi;
mod io;
mod kernels;
mod ops;
mod scratch;
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

/// The README's Rust example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
