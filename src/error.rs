//! The error type of the safe API and its one-to-one mapping to `nk_status`.

use std::fmt;

/// What went wrong with a call. Each kind maps to one `nk_status` code of the C API.
///
/// Three kinds exist for the C functions only and are never returned by the safe Rust API,
/// whose slices cannot be NULL or misaligned and whose panics are not caught: `NullPointer`,
/// `Misaligned` and `Internal`. More kinds may be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A required pointer is NULL. C API only.
    NullPointer,
    /// Sizes that the operation cannot take, or a slice whose length does not match the shape.
    BadShape,
    /// A scalar out of range, an unknown flag bit or an unknown enum value.
    BadArgument,
    /// An element or byte count overflows `usize` (or `u64` for counts).
    Overflow,
    /// A forbidden overlap between buffers: in Rust, a row norm's output given over an input it
    /// may not replace (see `RowNormIo`); in C, any overlapping buffers.
    Alias,
    /// A pointer not aligned to its element type. C API only.
    Misaligned,
    /// Something this CPU or build cannot do, such as an ISA it lacks.
    Unsupported,
    /// A bug: a panic was caught at the C boundary. C API only (in Rust the panic propagates).
    Internal,
}

/// An error of the safe API: a kind and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// A sentence naming the argument and the value at fault.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn bad_shape(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadShape, message)
    }

    pub(crate) fn bad_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadArgument, message)
    }

    pub(crate) fn alias(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Alias, message)
    }

    pub(crate) fn overflow(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Overflow, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

/// The result of a normkit call.
pub type Result<T> = std::result::Result<T, Error>;

/// Checks that an optional or required slice has exactly `expected` elements.
pub(crate) fn check_len<T>(name: &str, slice: &[T], expected: usize) -> Result<()> {
    if slice.len() == expected {
        Ok(())
    } else {
        Err(Error::bad_shape(format!(
            "{name} has {} elements, the shape needs {expected}",
            slice.len()
        )))
    }
}

/// Checks that `eps` is finite and not negative.
pub(crate) fn check_eps(eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::bad_argument(format!(
            "eps must be finite and >= 0, got {eps}"
        )))
    }
}
