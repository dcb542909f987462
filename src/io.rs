//! How kernels read `x` and write `y`: separately or in place, and how parallel tasks get
//! disjoint parts of them.
//!
//! This is the one module of the safe core with raw pointers: [`SharedIo`] hands out the parts
//! of a tensor that different tasks own (for example the strided rows of one channel), which
//! slices alone cannot express.

use crate::simd::F32Vec;
use std::marker::PhantomData;
use std::ops::Range;

/// The input and output of an elementwise-shaped operation.
#[derive(Debug)]
pub enum InOut<'a> {
    /// Read `x`, write `y` (same length, no overlap: guaranteed by the borrow rules).
    Separate { x: &'a [f32], y: &'a mut [f32] },
    /// Read and overwrite the same buffer. Gives bitwise the same result as `Separate`.
    InPlace(&'a mut [f32]),
}

impl<'a> InOut<'a> {
    /// Separate input and output, or an error if their lengths differ.
    pub fn separate(x: &'a [f32], y: &'a mut [f32]) -> crate::Result<Self> {
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
    pub(crate) fn input(&self) -> &[f32] {
        match self {
            InOut::Separate { x, .. } => x,
            InOut::InPlace(b) => b,
        }
    }

    /// A shareable view for parallel tasks that each own disjoint parts.
    pub(crate) fn share(&mut self) -> SharedIo<'_> {
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
pub enum BackwardIo<'a> {
    /// Only `dy`: no input gradient wanted.
    DyOnly(&'a [f32]),
    /// `dy` read, `dx` written: `InOut::Separate { x: dy, y: dx }`, or `InOut::InPlace` to
    /// overwrite `dy` with `dx`.
    WithDx(InOut<'a>),
}

impl BackwardIo<'_> {
    /// The output gradient.
    pub(crate) fn dy(&self) -> &[f32] {
        match self {
            BackwardIo::DyOnly(dy) => dy,
            BackwardIo::WithDx(io) => io.input(),
        }
    }
}

/// An [`InOut`] that parallel tasks share, each taking the parts it owns.
pub(crate) struct SharedIo<'a> {
    x: *const f32,
    y: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: SharedIo is a borrowed `&[f32]` plus `&mut [f32]`; the methods that create references
// from it are unsafe and require callers to keep the parts of different threads disjoint.
unsafe impl Send for SharedIo<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedIo<'_> {}

impl<'a> SharedIo<'a> {
    /// The input elements `range`, to read.
    ///
    /// # Safety
    /// No [`RowIo`] over an overlapping range may be alive while the returned slice is
    /// (in place, it would be a `&mut` to the same memory).
    pub(crate) unsafe fn input(&self, range: Range<usize>) -> &'a [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (checked above); the caller guarantees no writer to this range.
        unsafe { std::slice::from_raw_parts(self.x.add(range.start), range.len()) }
    }

    /// Read-and-write access to elements `range`.
    ///
    /// # Safety
    /// The ranges of all `RowIo`s and input slices alive at the same time must be disjoint.
    pub(crate) unsafe fn part(&self, range: Range<usize>) -> RowIo<'a> {
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

/// A contiguous part of an [`InOut`]: what one kernel call reads and writes.
pub(crate) enum RowIo<'a> {
    Separate(&'a [f32], &'a mut [f32]),
    InPlace(&'a mut [f32]),
}

impl RowIo<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            RowIo::Separate(x, _) => x.len(),
            RowIo::InPlace(b) => b.len(),
        }
    }

    /// Address of the first input element (for prefetching what follows it in memory).
    pub(crate) fn input_ptr(&self) -> *const f32 {
        match self {
            RowIo::Separate(x, _) => x.as_ptr(),
            RowIo::InPlace(b) => b.as_ptr(),
        }
    }

    /// The sub-part `range`, reborrowed.
    pub(crate) fn part(&mut self, range: Range<usize>) -> RowIo<'_> {
        match self {
            RowIo::Separate(x, y) => RowIo::Separate(&x[range.clone()], &mut y[range]),
            RowIo::InPlace(b) => RowIo::InPlace(&mut b[range]),
        }
    }

    /// `y[i] = f(i, x[i])` for every element of the part, one by one (in place, each element is
    /// read before it is written).
    pub(crate) fn map_scalar(&mut self, f: impl Fn(usize, f32) -> f32) {
        match self {
            RowIo::Separate(x, y) => {
                for (i, (o, &v)) in y.iter_mut().zip(x.iter()).enumerate() {
                    *o = f(i, v);
                }
            }
            RowIo::InPlace(b) => {
                for (i, o) in b.iter_mut().enumerate() {
                    *o = f(i, *o);
                }
            }
        }
    }

    /// Applies `f` to every vector of the part, `y[i..i+L] = f.apply(x[i..i+L], i, L)`; the
    /// last, partial vector is given its lane count instead of `L`.
    #[inline(always)]
    pub(crate) fn map<V: F32Vec>(&mut self, f: &impl VectorMap<V>) {
        match self {
            RowIo::Separate(x, y) => map_separate::<V, false>(x, y, 0, f),
            RowIo::InPlace(b) => map_in_place::<V, false>(b, 0, f),
        }
    }

    /// [`RowIo::map`] with streaming stores for the vector-aligned body of the output (partial
    /// vectors before and after it). The caller fences with `V::fence_streams()` when done.
    #[inline(always)]
    pub(crate) fn map_streaming<V: F32Vec>(&mut self, f: &impl VectorMap<V>) {
        let head = match self {
            RowIo::Separate(_, y) => unaligned_head::<V>(y),
            RowIo::InPlace(b) => unaligned_head::<V>(b),
        };
        let mut head_part = self.part(0..head);
        head_part.map(f);
        let len = self.len();
        match self.part(head..len) {
            RowIo::Separate(x, y) => map_separate::<V, true>(x, y, head, f),
            RowIo::InPlace(b) => map_in_place::<V, true>(b, head, f),
        }
    }
}

/// Elements of `y` before its first address aligned to a whole vector (`LANES * 4` bytes).
#[inline(always)]
pub(crate) fn unaligned_head<V: F32Vec>(y: &[f32]) -> usize {
    let bytes = V::LANES * 4;
    let misalign = y.as_ptr() as usize % bytes;
    if misalign == 0 {
        0
    } else {
        ((bytes - misalign) / 4).min(y.len())
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
pub(crate) fn store_vector<V: F32Vec, const STREAM: bool>(v: V, dst: &mut [f32]) {
    if STREAM {
        v.store_stream(dst)
    } else {
        v.store(dst)
    }
}

/// `y = f(x)` by vectors, a partial one last; `base` is the index of `x[0]` in the caller's part.
/// With `STREAM`, `y` is vector-aligned and whole vectors are streamed.
#[inline(always)]
fn map_separate<V: F32Vec, const STREAM: bool>(
    x: &[f32],
    y: &mut [f32],
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
        store_vector::<V, STREAM>(f.apply(V::load(xs), base + i * l, l), ys);
    }
    if !x_tail.is_empty() {
        f.apply(V::load_partial(x_tail, 0.0), base + full, x_tail.len())
            .store_partial(y_tail);
    }
}

/// [`map_separate`] in place.
#[inline(always)]
fn map_in_place<V: F32Vec, const STREAM: bool>(b: &mut [f32], base: usize, f: &impl VectorMap<V>) {
    let l = V::LANES;
    let full = b.len() / l * l;
    let (body, tail) = b.split_at_mut(full);
    for (i, v) in body.chunks_exact_mut(l).enumerate() {
        let y = f.apply(V::load(v), base + i * l, l);
        store_vector::<V, STREAM>(y, v);
    }
    if !tail.is_empty() {
        let v = V::load_partial(tail, 0.0);
        f.apply(v, base + full, tail.len()).store_partial(tail);
    }
}
