//! The C ABI: the only place with C types and raw pointers from callers.
//!
//! Every `nk_*` function runs its body through [`call`], which catches panics (mapped to
//! `NK_ERR_INTERNAL`), records the message of a failure for `nk_last_error_message`, and turns
//! the result into an `nk_status`. Before any slice is made, a function checks its pointers in
//! the contract's order: NULL ([`require`]), then the operation's own size, shape and argument
//! checks (the same ones the safe API runs), then alignment and aliasing ([`Regions`]).

#![allow(non_camel_case_types)]

mod batchnorm;
mod dropout;
mod groupnorm;
mod layernorm;
mod library;

pub use batchnorm::*;
pub use dropout::*;
pub use groupnorm::*;
pub use layernorm::*;
pub use library::*;

use crate::error::{Error, ErrorKind, Result};
use crate::io::{BackwardIo, InOut};
use crate::simd::element::Element;
use std::cell::RefCell;
use std::ffi::CString;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Status code returned by every operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum nk_status {
    NK_OK = 0,
    /// A required pointer is NULL.
    NK_ERR_NULL_POINTER = 1,
    /// Sizes that the operation cannot take (e.g. groups not dividing C).
    NK_ERR_BAD_SHAPE = 2,
    /// A scalar out of range (eps < 0 or not finite, p outside [0,1], ...), an unknown flag bit or
    /// enum value.
    NK_ERR_BAD_ARGUMENT = 3,
    /// An element count too large for the address space (PTRDIFF_MAX bytes), counts whose sum
    /// overflows uint64_t, or a dropout call reading past word 2^64 - 1 of its random stream.
    NK_ERR_OVERFLOW = 4,
    /// Forbidden overlap between buffers.
    NK_ERR_ALIAS = 5,
    /// A pointer not aligned to its element type.
    NK_ERR_MISALIGNED = 6,
    /// Not available here: an ISA this CPU lacks, or threads that cannot be started.
    NK_ERR_UNSUPPORTED = 7,
    /// A panic caught at the boundary: a bug of normkit's, or a host executor that broke its
    /// contract (the message then starts with "executor fault").
    NK_ERR_INTERNAL = 8,
}

impl From<ErrorKind> for nk_status {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NullPointer => nk_status::NK_ERR_NULL_POINTER,
            ErrorKind::BadShape => nk_status::NK_ERR_BAD_SHAPE,
            ErrorKind::BadArgument => nk_status::NK_ERR_BAD_ARGUMENT,
            ErrorKind::Overflow => nk_status::NK_ERR_OVERFLOW,
            ErrorKind::Alias => nk_status::NK_ERR_ALIAS,
            ErrorKind::Misaligned => nk_status::NK_ERR_MISALIGNED,
            ErrorKind::Unsupported => nk_status::NK_ERR_UNSUPPORTED,
            ErrorKind::Internal => nk_status::NK_ERR_INTERNAL,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static IN_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

pub(crate) fn last_error_ptr() -> *const libc::c_char {
    // The pointer stays valid until this thread's next failing call replaces the string.
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Keeps panics inside normkit calls (and on normkit's pool threads) from printing: they become
/// `NK_ERR_INTERNAL` with the panic's message. Panics elsewhere in the process reach the hook
/// that was installed before.
fn install_quiet_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours = IN_CALL.with(|c| c.get())
                || crate::context::in_executor_task()
                || std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("normkit-"));
            if !ours {
                previous(info);
            }
        }));
    });
}

/// Runs the body of a C entry point: catches panics, records failures, returns the status.
pub(crate) fn call(body: impl FnOnce() -> Result<()>) -> nk_status {
    install_quiet_panic_hook();
    IN_CALL.with(|c| c.set(true));
    let result = catch_unwind(AssertUnwindSafe(body));
    IN_CALL.with(|c| c.set(false));
    match result {
        Ok(Ok(())) => nk_status::NK_OK,
        Ok(Err(e)) => {
            set_last_error(e.message());
            e.kind().into()
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            if what.starts_with("the executor ") {
                // The host's executor broke its contract (a task skipped, repeated or out of
                // range): not a bug of normkit's.
                set_last_error(&format!("executor fault: {what}"));
            } else {
                set_last_error(&format!("internal error (please report): {what}"));
            }
            nk_status::NK_ERR_INTERNAL
        }
    }
}

/// `NK_ERR_NULL_POINTER` if `ptr` is NULL while it must point to `len > 0` elements.
pub(crate) fn require<T>(name: &str, ptr: *const T, len: usize) -> Result<()> {
    if ptr.is_null() && len > 0 {
        Err(Error::new(
            ErrorKind::NullPointer,
            format!("{name} is NULL"),
        ))
    } else {
        Ok(())
    }
}

/// Like [`require`], for pointers that are required whatever the sizes.
pub(crate) fn require_always<T>(name: &str, ptr: *const T) -> Result<()> {
    require(name, ptr, 1)
}

/// One buffer of a call, for the alignment and alias checks.
#[derive(Clone, Copy)]
struct Region {
    name: &'static str,
    start: usize,
    bytes: usize,
    align: usize,
    writes: bool,
    /// The input this output may replace exactly (in place).
    replaces: Option<&'static str>,
}

/// Most buffers any one call takes.
const MAX_REGIONS: usize = 16;

/// The buffers of one call: checked for alignment, then for forbidden overlaps. Lives on the
/// stack: small calls pay no allocation for their checks.
pub(crate) struct Regions {
    list: [Region; MAX_REGIONS],
    len: usize,
}

impl Default for Regions {
    fn default() -> Self {
        let empty = Region {
            name: "",
            start: 0,
            bytes: 0,
            align: 1,
            writes: false,
            replaces: None,
        };
        Regions {
            list: [empty; MAX_REGIONS],
            len: 0,
        }
    }
}

impl Regions {
    fn add<T>(&mut self, name: &'static str, ptr: *const T, len: usize, writes: bool) -> &mut Self {
        // Sizes were checked for overflow before; saturate anyway so the check never wraps.
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        self.raw(
            name,
            ptr.cast(),
            bytes,
            std::mem::align_of::<T>(),
            writes,
            None,
        )
    }

    /// A buffer the call only reads (NULL is skipped).
    pub(crate) fn input<T>(&mut self, name: &'static str, ptr: *const T, len: usize) -> &mut Self {
        self.add(name, ptr, len, false)
    }

    /// A buffer the call writes (or reads and writes).
    pub(crate) fn output<T>(&mut self, name: &'static str, ptr: *mut T, len: usize) -> &mut Self {
        self.add(name, ptr as *const T, len, true)
    }

    /// An output that may be exactly the input `replaces` (in place) but must not overlap it
    /// otherwise.
    pub(crate) fn output_replacing<T>(
        &mut self,
        name: &'static str,
        ptr: *mut T,
        len: usize,
        replaces: &'static str,
    ) -> &mut Self {
        self.add(name, ptr as *const T, len, true);
        if !ptr.is_null() {
            self.list[self.len - 1].replaces = Some(replaces);
        }
        self
    }

    /// A buffer of `bytes` bytes aligned to `align`, given by address (typed at run time):
    /// an output if `writes`, which may be exactly the input named `replaces`.
    pub(crate) fn raw(
        &mut self,
        name: &'static str,
        addr: *const u8,
        bytes: usize,
        align: usize,
        writes: bool,
        replaces: Option<&'static str>,
    ) -> &mut Self {
        if !addr.is_null() {
            self.list[self.len] = Region {
                name,
                start: addr as usize,
                bytes,
                align,
                writes,
                replaces,
            };
            self.len += 1;
        }
        self
    }

    /// `NK_ERR_MISALIGNED` for any buffer not aligned to its element type, then `NK_ERR_ALIAS`
    /// for any overlap involving an output, except an output exactly equal to the input it
    /// replaces.
    pub(crate) fn check(&self) -> Result<()> {
        let list = &self.list[..self.len];
        for r in list {
            if !r.start.is_multiple_of(r.align) {
                return Err(Error::new(
                    ErrorKind::Misaligned,
                    format!("{} is not aligned to {} bytes", r.name, r.align),
                ));
            }
        }
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if !(a.writes || b.writes) || a.bytes == 0 || b.bytes == 0 {
                    continue;
                }
                let overlap = a.start < b.start.saturating_add(b.bytes)
                    && b.start < a.start.saturating_add(a.bytes);
                if !overlap {
                    continue;
                }
                let exact = a.start == b.start && a.bytes == b.bytes;
                let in_place = exact && (a.replaces == Some(b.name) || b.replaces == Some(a.name));
                if !in_place {
                    return Err(Error::alias(format!("{} and {} overlap", a.name, b.name)));
                }
            }
        }
        Ok(())
    }
}

/// A slice from a checked pointer: NULL or a zero length gives an empty slice.
///
/// # Safety
/// Unless NULL or `len == 0`, `ptr` must be valid for reads of `len` elements (the caller's
/// promise, as in C), aligned, and not written through any other reference while the slice lives.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: see the function's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// A mutable slice from a checked pointer: NULL or a zero length gives an empty slice.
///
/// # Safety
/// As [`slice`], for writes, with no other reference to the memory while the slice lives.
pub(crate) unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize) -> &'a mut [T] {
    if ptr.is_null() || len == 0 {
        &mut []
    } else {
        // SAFETY: see the function's contract.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

/// `Some(slice)` for a non-NULL optional pointer.
///
/// # Safety
/// As [`slice`].
pub(crate) unsafe fn optional<'a, T>(ptr: *const T, len: usize) -> Option<&'a [T]> {
    // SAFETY: forwarded.
    (!ptr.is_null()).then(|| unsafe { slice(ptr, len) })
}

/// `Some(slice)` for a non-NULL optional output pointer.
///
/// # Safety
/// As [`slice_mut`].
pub(crate) unsafe fn optional_mut<'a, T>(ptr: *mut T, len: usize) -> Option<&'a mut [T]> {
    // SAFETY: forwarded.
    (!ptr.is_null()).then(|| unsafe { slice_mut(ptr, len) })
}

/// The data of an elementwise-shaped call: in place when `y == x`.
///
/// # Safety
/// `x` and `y` passed [`Regions::check`] with `y` registered by `output_replacing(.., "x")`, and
/// are valid for `len` elements.
pub(crate) unsafe fn in_out<'a, E: Element>(x: *const E, y: *mut E, len: usize) -> InOut<'a, E> {
    if std::ptr::eq(x, y) && len > 0 {
        // SAFETY: forwarded; the single mutable slice is the only reference.
        InOut::InPlace(unsafe { slice_mut(y, len) })
    } else {
        // SAFETY: forwarded; the alias check guarantees x and y do not overlap.
        unsafe {
            InOut::Separate {
                x: slice(x, len),
                y: slice_mut(y, len),
            }
        }
    }
}

/// The gradient of a backward: `dx` optional, in place when `dx == dy`.
///
/// # Safety
/// `dy` and `dx` passed [`Regions::check`] with `dx` registered by `output_replacing(.., "dy")`,
/// and are valid for `n` elements.
pub(crate) unsafe fn backward_io<'a, E: Element>(
    dy: *const E,
    dx: *mut E,
    n: usize,
) -> BackwardIo<'a, E> {
    if dx.is_null() {
        // SAFETY: forwarded.
        BackwardIo::DyOnly(unsafe { slice(dy, n) })
    } else {
        // SAFETY: forwarded.
        BackwardIo::WithDx(unsafe { in_out(dy, dx, n) })
    }
}

/// A bfloat16 value: the upper 16 bits of an IEEE 754 binary32. Data of the `_bf16` functions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nk_bf16 {
    pub bits: u16,
}

/// An IEEE 754 binary16 value. Data of the `_f16` functions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nk_f16 {
    pub bits: u16,
}

// The `_bf16` and `_f16` entry points cast `*const nk_bf16` to `*const bf16` (and f16 alike):
// both are one `u16` (`half`'s types are `repr(transparent)` over `u16`).
const _: () = assert!(
    std::mem::size_of::<nk_bf16>() == 2
        && std::mem::align_of::<nk_bf16>() == 2
        && std::mem::size_of::<nk_f16>() == 2
        && std::mem::align_of::<nk_f16>() == 2
        && std::mem::size_of::<crate::bf16>() == 2
        && std::mem::align_of::<crate::bf16>() == 2
        && std::mem::size_of::<crate::f16>() == 2
        && std::mem::align_of::<crate::f16>() == 2
);

/// Checks that `flags` has no bit outside `allowed`.
pub(crate) fn check_flags(flags: u32, allowed: u32, operation: &str) -> Result<()> {
    let unknown = flags & !allowed;
    if unknown == 0 {
        Ok(())
    } else {
        Err(Error::bad_argument(format!(
            "flag bits {unknown:#x} are not accepted by {operation}"
        )))
    }
}
