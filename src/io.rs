//! How kernels read `x` and write `y`: separately or in place, and how parallel tasks get
//! disjoint parts of them.
//!
//! This is the one module of the safe core with raw pointers: [`SharedIo`] hands out the parts
//! of a tensor that different tasks own (for example the strided rows of one channel), which
//! slices alone cannot express.

use crate::simd::F32Vec;
use crate::simd::element::{Element, ElementIo};
use std::marker::PhantomData;
use std::ops::Range;

/// The input and output of an elementwise-shaped operation, of element type `E` (`f32`, `bf16`
/// or `f16`).
#[derive(Debug)]
pub enum InOut<'a, E: Element = f32> {
    /// Read `x`, write `y` (same length, no overlap: guaranteed by the borrow rules).
    Separate { x: &'a [E], y: &'a mut [E] },
    /// Read and overwrite the same buffer. Gives bitwise the same result as `Separate`.
    InPlace(&'a mut [E]),
}

impl<'a, E: Element> InOut<'a, E> {
    /// Separate input and output, or an error if their lengths differ.
    pub fn separate(x: &'a [E], y: &'a mut [E]) -> crate::Result<Self> {
        crate::error::check_len("y", y, x.len())?;
        Ok(InOut::Separate { x, y })
    }

    pub fn len(&self) -> usize {
        match self {
            InOut::Separate { x, .. } => x.len(),
            InOut::InPlace(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The input as it is now.
    pub(crate) fn input(&self) -> &[E] {
        match self {
            InOut::Separate { x, .. } => x,
            InOut::InPlace(b) => b,
        }
    }

    /// A shareable view for parallel tasks that each own disjoint parts.
    pub(crate) fn share(&mut self) -> SharedIo<'_, E> {
        let (x, y, len) = match self {
            InOut::Separate { x, y } => (x.as_ptr(), y.as_mut_ptr(), x.len()),
            InOut::InPlace(b) => (b.as_ptr(), b.as_mut_ptr(), b.len()),
        };
        SharedIo {
            x,
            y,
            len,
            _borrow: PhantomData,
        }
    }
}

/// The output gradient `dy` of a normalization backward and where the input gradient `dx` goes,
/// if anywhere.
#[derive(Debug)]
pub enum BackwardIo<'a, E: Element = f32> {
    /// Only `dy`: no input gradient wanted.
    DyOnly(&'a [E]),
    /// `dy` read, `dx` written: `InOut::Separate { x: dy, y: dx }`, or `InOut::InPlace` to
    /// overwrite `dy` with `dx`.
    WithDx(InOut<'a, E>),
}

impl<E: Element> BackwardIo<'_, E> {
    /// The output gradient.
    pub(crate) fn dy(&self) -> &[E] {
        match self {
            BackwardIo::DyOnly(dy) => dy,
            BackwardIo::WithDx(io) => io.input(),
        }
    }
}

/// An [`InOut`] that parallel tasks share, each taking the parts it owns.
pub(crate) struct SharedIo<'a, E = f32> {
    x: *const E,
    y: *mut E,
    len: usize,
    _borrow: PhantomData<&'a mut [E]>,
}

// SAFETY: SharedIo is a borrowed `&[E]` plus `&mut [E]` of `Send + Sync` elements; the methods
// that create references from it are unsafe and require callers to keep the parts of different
// threads disjoint.
unsafe impl<E: Send + Sync> Send for SharedIo<'_, E> {}
// SAFETY: as above.
unsafe impl<E: Send + Sync> Sync for SharedIo<'_, E> {}

impl<'a, E> SharedIo<'a, E> {
    /// The input elements `range`, to read.
    ///
    /// # Safety
    /// No [`RowIo`] over an overlapping range may be alive while the returned slice is
    /// (in place, it would be a `&mut` to the same memory).
    pub(crate) unsafe fn input(&self, range: Range<usize>) -> &'a [E] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (checked above); the caller guarantees no writer to this range.
        unsafe { std::slice::from_raw_parts(self.x.add(range.start), range.len()) }
    }

    /// Read-and-write access to elements `range`.
    ///
    /// # Safety
    /// The ranges of all `RowIo`s and input slices alive at the same time must be disjoint.
    pub(crate) unsafe fn part(&self, range: Range<usize>) -> RowIo<'a, E> {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (checked above); the caller guarantees exclusive access to `range`.
        // When x == y (in place) one `&mut` slice is made, never a `&` and a `&mut` together.
        unsafe {
            let y = std::slice::from_raw_parts_mut(self.y.add(range.start), range.len());
            if std::ptr::eq(self.x, self.y) {
                RowIo::InPlace(y)
            } else {
                let x = std::slice::from_raw_parts(self.x.add(range.start), range.len());
                RowIo::Separate(x, y)
            }
        }
    }
}

/// A contiguous part of an [`InOut`]: what one kernel call reads and writes. The input has
/// elements of type `X`, the output of type `Y` (in place, both are `Y`).
pub(crate) enum RowIo<'a, X = f32, Y = X> {
    Separate(&'a [X], &'a mut [Y]),
    InPlace(&'a mut [Y]),
}

impl<X, Y> RowIo<'_, X, Y> {
    pub(crate) fn len(&self) -> usize {
        match self {
            RowIo::Separate(x, _) => x.len(),
            RowIo::InPlace(b) => b.len(),
        }
    }

    /// Address of the first input element (for prefetching what follows it in memory).
    pub(crate) fn input_ptr(&self) -> *const X {
        match self {
            RowIo::Separate(x, _) => x.as_ptr(),
            RowIo::InPlace(b) => b.as_ptr().cast(),
        }
    }

    /// The sub-part `range`, reborrowed.
    pub(crate) fn part(&mut self, range: Range<usize>) -> RowIo<'_, X, Y> {
        match self {
            RowIo::Separate(x, y) => RowIo::Separate(&x[range.clone()], &mut y[range]),
            RowIo::InPlace(b) => RowIo::InPlace(&mut b[range]),
        }
    }
}

impl<X: ElementIo, Y: ElementIo> RowIo<'_, X, Y> {
    /// `y[i] = f(i, x[i])` for every element of the part, one by one, in `f32` (in place, each
    /// element is read before it is written).
    pub(crate) fn map_scalar(&mut self, f: impl Fn(usize, f32) -> f32) {
        match self {
            RowIo::Separate(x, y) => {
                for (i, (o, &v)) in y.iter_mut().zip(x.iter()).enumerate() {
                    *o = Y::from_f32(f(i, v.to_f32()));
                }
            }
            RowIo::InPlace(b) => {
                for (i, o) in b.iter_mut().enumerate() {
                    *o = Y::from_f32(f(i, o.to_f32()));
                }
            }
        }
    }

    /// Applies `f` to every vector of the part, `y[i..i+L] = f.apply(x[i..i+L], i, L)`; the
    /// last, partial vector is given its lane count instead of `L`.
    #[inline(always)]
    pub(crate) fn map<V: F32Vec>(&mut self, f: &impl VectorMap<V>) {
        match self {
            RowIo::Separate(x, y) => map_separate::<V, X, Y, false>(x, y, 0, f),
            RowIo::InPlace(b) => map_in_place::<V, Y, false>(b, 0, f),
        }
    }

    /// [`RowIo::map`] with streaming stores for the vector-aligned body of the output (partial
    /// vectors before and after it). The caller fences with `V::fence_streams()` when done.
    #[inline(always)]
    pub(crate) fn map_streaming<V: F32Vec>(&mut self, f: &impl VectorMap<V>) {
        let head = match self {
            RowIo::Separate(_, y) => unaligned_head::<V, Y>(y),
            RowIo::InPlace(b) => unaligned_head::<V, Y>(b),
        };
        let mut head_part = self.part(0..head);
        head_part.map(f);
        let len = self.len();
        match self.part(head..len) {
            RowIo::Separate(x, y) => map_separate::<V, X, Y, true>(x, y, head, f),
            RowIo::InPlace(b) => map_in_place::<V, Y, true>(b, head, f),
        }
    }
}

/// Elements of `y` before its first address aligned to a whole vector of `E` (`LANES *
/// size_of::<E>()` bytes).
#[inline(always)]
pub(crate) fn unaligned_head<V: F32Vec, E: ElementIo>(y: &[E]) -> usize {
    let bytes = V::LANES * E::BYTES;
    let misalign = y.as_ptr() as usize % bytes;
    if misalign == 0 {
        0
    } else {
        ((bytes - misalign) / E::BYTES).min(y.len())
    }
}

/// An elementwise map over vectors, for [`RowIo::map`].
///
/// A trait rather than a closure: `apply` is `#[inline(always)]` in every implementation, so it
/// is compiled inside the caller's `#[target_feature]` function. (A closure body is a separate
/// function without those features, where the vector intrinsics would become calls.)
pub(crate) trait VectorMap<V: F32Vec> {
    /// `x` holds the elements from index `i`; `lanes` of them are valid.
    fn apply(&self, x: V, i: usize, lanes: usize) -> V;
}

/// Stores a whole vector, streaming (`dst` vector-aligned) if `STREAM`.
#[inline(always)]
pub(crate) fn store_vector<V: F32Vec, E: ElementIo, const STREAM: bool>(v: V, dst: &mut [E]) {
    if STREAM {
        v.write_stream(dst)
    } else {
        v.write(dst)
    }
}

/// `y = f(x)` by vectors, a partial one last; `base` is the index of `x[0]` in the caller's part.
/// With `STREAM`, `y` is vector-aligned and whole vectors are streamed.
#[inline(always)]
fn map_separate<V: F32Vec, X: ElementIo, Y: ElementIo, const STREAM: bool>(
    x: &[X],
    y: &mut [Y],
    base: usize,
    f: &impl VectorMap<V>,
) {
    let l = V::LANES;
    let full = x.len() / l * l;
    let (x_body, x_tail) = x.split_at(full);
    let (y_body, y_tail) = y.split_at_mut(full);
    for (i, (xs, ys)) in x_body
        .chunks_exact(l)
        .zip(y_body.chunks_exact_mut(l))
        .enumerate()
    {
        store_vector::<V, Y, STREAM>(f.apply(V::read(xs), base + i * l, l), ys);
    }
    if !x_tail.is_empty() {
        f.apply(V::read_partial(x_tail, 0.0), base + full, x_tail.len())
            .write_partial(y_tail);
    }
}

/// [`map_separate`] in place.
#[inline(always)]
fn map_in_place<V: F32Vec, E: ElementIo, const STREAM: bool>(
    b: &mut [E],
    base: usize,
    f: &impl VectorMap<V>,
) {
    let l = V::LANES;
    let full = b.len() / l * l;
    let (body, tail) = b.split_at_mut(full);
    for (i, v) in body.chunks_exact_mut(l).enumerate() {
        let y = f.apply(V::read(v), base + i * l, l);
        store_vector::<V, E, STREAM>(y, v);
    }
    if !tail.is_empty() {
        let v = V::read_partial(tail, 0.0);
        f.apply(v, base + full, tail.len()).write_partial(tail);
    }
}
