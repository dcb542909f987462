//! Buffers that show what a call wrote.
//!
//! [`SENTINEL`] fills the output vectors of the safe-API tests. The arena of the C-contract
//! tests holds every buffer of a call in one block of memory filled with a byte pattern that
//! varies with the position, so that "nothing written" (after an error, or outside a call's
//! extents) is checked over all of them at once, inputs included, and pointers moved on
//! purpose (misaligned, overlapping another buffer) stay inside memory the test owns.

/// What an output buffer of the safe-API tests holds before a call: a value no call computes
/// from the tests' data, so that an element a call must not write is seen to be untouched.
pub const SENTINEL: f32 = -7777.25;

/// Bytes of slack before the first buffer [`Arena::alloc`] gives and after each: room for a
/// pointer moved by a few bytes or one element without reaching another buffer or leaving the
/// arena.
pub const GAP: usize = 64;

/// 64 bytes, 64-byte aligned: the unit the arena is made of, so that its start is aligned for
/// any element type and any vector.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

pub struct Arena {
    /// Owns the memory; never resized, so `base` stays valid.
    _lines: Vec<Line>,
    base: *mut u8,
    len: usize,
    next: usize,
}

/// The byte the arena holds at `offset` until something writes there. Not a constant: a write
/// of any one value cannot reproduce it over more than a byte.
fn pattern(offset: usize) -> u8 {
    (offset as u8).wrapping_mul(37) ^ 0xA5 ^ (offset >> 8) as u8
}

impl Arena {
    /// `len` bytes (rounded up to a multiple of 64), 64-byte aligned, filled with the pattern.
    pub fn new(len: usize) -> Arena {
        let mut lines = vec![Line([0; 64]); len.div_ceil(64)];
        let len = lines.len() * 64;
        let base = lines.as_mut_ptr().cast::<u8>();
        for i in 0..len {
            // SAFETY: in bounds of the lines just allocated.
            unsafe { base.add(i).write(pattern(i)) };
        }
        Arena {
            _lines: lines,
            base,
            len,
            next: GAP,
        }
    }

    /// A new buffer of `n` elements of `T`, 64-byte aligned, followed by `GAP` bytes that
    /// belong to no buffer.
    pub fn alloc<T>(&mut self, n: usize) -> *mut T {
        let start = self.next.next_multiple_of(64);
        self.next = start + n * size_of::<T>() + GAP;
        assert!(self.next <= self.len, "arena too small");
        self.at(start)
    }

    /// The address `offset` bytes into the arena, for tests that lay out their buffers
    /// themselves (it may be misaligned for `T` on purpose).
    pub fn at<T>(&mut self, offset: usize) -> *mut T {
        assert!(offset <= self.len, "offset {offset} past the arena");
        // SAFETY: in bounds (checked above).
        unsafe { self.base.add(offset) }.cast()
    }

    /// Every byte of the arena, to compare with a later copy.
    pub fn bytes(&self) -> Vec<u8> {
        // SAFETY: the arena's own memory, initialized in `new`.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }.to_vec()
    }

    /// The offset of the first byte that differs from `before` (an earlier [`Arena::bytes`]).
    pub fn changed_since(&self, before: &[u8]) -> Option<usize> {
        assert_eq!(before.len(), self.len);
        before.iter().zip(self.bytes()).position(|(&a, b)| a != b)
    }
}

/// Copies `values` to `p`: an arena buffer (or other memory) with room for them.
pub fn write<T: Copy>(p: *mut T, values: &[T]) {
    // SAFETY: the callers' buffers have room for `values` (test fixtures of known extents).
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), p, values.len()) };
}

/// The `n` values at `p`: an arena buffer (or other memory) holding at least `n`.
pub fn read<T: Copy>(p: *const T, n: usize) -> Vec<T> {
    // SAFETY: the callers' buffers hold `n` values (test fixtures of known extents).
    unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
}

/// `p` moved by `bytes` bytes (misaligned for a non-multiple of the element size). Never
/// dereferenced here: a pointer the calls under test must reject or accept.
pub fn shift<T>(p: *mut T, bytes: isize) -> *mut T {
    p.cast::<u8>().wrapping_offset(bytes).cast()
}
