//! How kernels read `x` and write `y`: separately or in place, and how parallel tasks get
//! disjoint parts of them.
//!
//! This is the one module of the safe core with raw pointers: [`SharedIo`] hands out the parts
//! of a tensor that different tasks own (for example the strided rows of one channel), which
//! slices alone cannot express.

use crate::simd::F32Vec;
use crate::simd::element::{Element, ElementIo, bf16, f16};
use std::marker::PhantomData;
use std::ops::Range;

/// The input and output of an elementwise-shaped operation, of element type `E` (`f32`, `bf16`
/// or `f16`).
#[derive(Debug)]
pub enum InOut<'a, E: Element = f32> {
    /// Read `x`, write `y` (same length, no overlap: guaranteed by the borrow rules).
    Separate {
        /// The input.
        x: &'a [E],
        /// The output.
        y: &'a mut [E],
    },
    /// Read and overwrite the same buffer. Gives bitwise the same result as `Separate`.
    InPlace(&'a mut [E]),
}

impl<'a, E: Element> InOut<'a, E> {
    /// Separate input and output, or an error if their lengths differ.
    pub fn separate(x: &'a [E], y: &'a mut [E]) -> crate::Result<Self> {
        crate::error::check_len("y", y, x.len())?;
        Ok(InOut::Separate { x, y })
    }

    /// Elements of the input (and of the output).
    pub fn len(&self) -> usize {
        match self {
            InOut::Separate { x, .. } => x.len(),
            InOut::InPlace(b) => b.len(),
        }
    }

    /// Whether there are no elements.
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
            // Both pointers from one `&mut` reborrow: taking `as_ptr` and then `as_mut_ptr`
            // would make the second (a unique reborrow) invalidate the first under Stacked
            // Borrows, so reading through `x` would be undefined.
            InOut::InPlace(b) => {
                let p = b.as_mut_ptr();
                (p.cast_const(), p, b.len())
            }
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
        self.map_spread(f, false, Spread::NONE)
    }

    /// [`RowIo::map`] with streaming stores for the vector-aligned body of the output (partial
    /// vectors before and after it). The caller fences with `V::fence_streams()` when done.
    #[inline(always)]
    pub(crate) fn map_streaming<V: F32Vec>(&mut self, f: &impl VectorMap<V>) {
        self.map_spread(f, true, Spread::NONE)
    }

    /// [`RowIo::map`], streaming if `stream` (see [`RowIo::map_streaming`]), and prefetching
    /// along the input read as `spread` says (anchored at the part's element 0).
    #[inline(always)]
    pub(crate) fn map_spread<V: F32Vec>(
        &mut self,
        f: &impl VectorMap<V>,
        stream: bool,
        spread: Spread,
    ) {
        if !stream {
            match self {
                RowIo::Separate(x, y) => map_separate::<V, X, Y, false>(x, y, 0, f, spread),
                RowIo::InPlace(b) => map_in_place::<V, Y, false>(b, 0, f, spread),
            }
            return;
        }
        let head = match self {
            RowIo::Separate(_, y) => unaligned_head::<V, Y>(y),
            RowIo::InPlace(b) => unaligned_head::<V, Y>(b),
        };
        match self.part(0..head) {
            RowIo::Separate(x, y) => map_separate::<V, X, Y, false>(x, y, 0, f, Spread::NONE),
            RowIo::InPlace(b) => map_in_place::<V, Y, false>(b, 0, f, Spread::NONE),
        }
        let len = self.len();
        match self.part(head..len) {
            RowIo::Separate(x, y) => map_separate::<V, X, Y, true>(x, y, head, f, spread),
            RowIo::InPlace(b) => map_in_place::<V, Y, true>(b, head, f, spread),
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

/// A prefetch spread along a pass over a row: for every two cache lines' worth of elements
/// the pass reads, one line of the region at `to`, so that a region half as long as the pass is
/// prefetched evenly along it. A row norm's two passes over a row (statistics, then
/// normalization) each prefetch one half of the next row so, which keeps the memory reading
/// through both passes as a copy does (a whole row prefetched during one pass leaves the other
/// with no read in flight). Addresses are computed with wrapping arithmetic and may lie
/// anywhere: prefetching never faults.
#[derive(Clone, Copy)]
pub(crate) struct Spread {
    /// The line prefetched at the pass's element 0 (none: no prefetch).
    to: Option<*const u8>,
}

impl Spread {
    pub(crate) const NONE: Spread = Spread { to: None };

    /// A spread whose pass, reading elements of type `X`, prefetches from `to` on.
    #[inline(always)]
    pub(crate) fn to<X>(to: *const X) -> Spread {
        Spread {
            to: Some(to.cast()),
        }
    }

    /// The same spread for a pass that starts at element `i` of this one's (of type `X`).
    #[inline(always)]
    pub(crate) fn from<X>(self, i: usize) -> Spread {
        match self.to {
            Some(p) => Spread {
                to: Some(p.wrapping_add(i / 2 * std::mem::size_of::<X>())),
            },
            None => self,
        }
    }

    /// Called by a pass reading element `i` (of type `X`, counted from the pass's element 0):
    /// at every second line's worth of elements, prefetches the line of region element `i / 2`.
    #[inline(always)]
    pub(crate) fn at<V: F32Vec, X>(self, i: usize) {
        let size = std::mem::size_of::<X>();
        if let Some(p) = self.to
            && (i * size).is_multiple_of(2 * crate::simd::LINE_BYTES)
        {
            V::prefetch(p.wrapping_add(i / 2 * size));
        }
    }
}

/// `y = f(x)` by vectors, a partial one last; `base` is the index of `x[0]` in the caller's part.
/// With `STREAM`, `y` is vector-aligned and whole vectors are streamed; `spread` is anchored
/// at element 0 of the caller's part.
#[inline(always)]
fn map_separate<V: F32Vec, X: ElementIo, Y: ElementIo, const STREAM: bool>(
    x: &[X],
    y: &mut [Y],
    base: usize,
    f: &impl VectorMap<V>,
    spread: Spread,
) {
    let l = V::LANES;
    let spread = spread.from::<X>(base);
    let full = x.len() / l * l;
    let (x_body, x_tail) = x.split_at(full);
    let (y_body, y_tail) = y.split_at_mut(full);
    // Index loops, not zipped `chunks_exact`: a zip of chunks is built by a call that divides
    // each length by the chunk size, which the compiler leaves out of line in large kernels
    // (two divisions per row, 5% of a layer norm of rows of 768).
    for i in (0..full).step_by(l) {
        spread.at::<V, X>(i);
        let v = f.apply(V::read(&x_body[i..i + l]), base + i, l);
        store_vector::<V, Y, STREAM>(v, &mut y_body[i..i + l]);
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
    spread: Spread,
) {
    let l = V::LANES;
    let spread = spread.from::<E>(base);
    let full = b.len() / l * l;
    let (body, tail) = b.split_at_mut(full);
    // Index loops, as in `map_separate`.
    for i in (0..full).step_by(l) {
        spread.at::<V, E>(i);
        let v = &mut body[i..i + l];
        let y = f.apply(V::read(v), base + i, l);
        store_vector::<V, E, STREAM>(y, v);
    }
    if !tail.is_empty() {
        let v = V::read_partial(tail, 0.0);
        f.apply(v, base + full, tail.len()).write_partial(tail);
    }
}

// ---------------------------------------------------------------------------------------------
// Strided rows of any element type: the row norms' tensors.

/// The element type of a tensor of the row norms (`nk_dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE binary16.
    F16,
    /// Signed 8-bit integers: only the quantized output `y`.
    I8,
}

impl Dtype {
    /// Size of one element in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::I8 => 1,
        }
    }
}

/// The elements of a tensor that is read, of one of the data types.
#[derive(Clone, Copy, Debug)]
pub enum RowData<'a> {
    /// `f32` elements.
    F32(&'a [f32]),
    /// `bf16` elements.
    Bf16(&'a [bf16]),
    /// `f16` elements.
    F16(&'a [f16]),
}

/// The elements of a tensor that is written (or read and written).
#[derive(Debug)]
pub enum RowDataMut<'a> {
    /// `f32` elements.
    F32(&'a mut [f32]),
    /// `bf16` elements.
    Bf16(&'a mut [bf16]),
    /// `f16` elements.
    F16(&'a mut [f16]),
    /// `i8` elements: only a quantized output `y`.
    I8(&'a mut [i8]),
}

macro_rules! row_data_from {
    ($t:ty, $v:ident) => {
        impl<'a> From<&'a [$t]> for RowData<'a> {
            fn from(s: &'a [$t]) -> Self {
                RowData::$v(s)
            }
        }
        row_data_from!(mut $t, $v);
    };
    (mut $t:ty, $v:ident) => {
        impl<'a> From<&'a mut [$t]> for RowDataMut<'a> {
            fn from(s: &'a mut [$t]) -> Self {
                RowDataMut::$v(s)
            }
        }
    };
}
row_data_from!(f32, F32);
row_data_from!(bf16, Bf16);
row_data_from!(f16, F16);
row_data_from!(mut i8, I8);

impl RowData<'_> {
    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            RowData::F32(_) => Dtype::F32,
            RowData::Bf16(_) => Dtype::Bf16,
            RowData::F16(_) => Dtype::F16,
        }
    }

    /// Elements (not bytes).
    pub fn len(&self) -> usize {
        match self {
            RowData::F32(s) => s.len(),
            RowData::Bf16(s) => s.len(),
            RowData::F16(s) => s.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RowDataMut<'_> {
    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            RowDataMut::F32(_) => Dtype::F32,
            RowDataMut::Bf16(_) => Dtype::Bf16,
            RowDataMut::F16(_) => Dtype::F16,
            RowDataMut::I8(_) => Dtype::I8,
        }
    }

    /// Elements (not bytes).
    pub fn len(&self) -> usize {
        match self {
            RowDataMut::F32(s) => s.len(),
            RowDataMut::Bf16(s) => s.len(),
            RowDataMut::F16(s) => s.len(),
            RowDataMut::I8(s) => s.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows that are read: row `r` is `data[r * stride .. r * stride + cols]`; `stride` 0 means
/// `cols` (packed). `data` holds at least the extent `(rows - 1) * stride + cols`.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    /// The elements.
    pub data: RowData<'a>,
    /// Elements from one row's start to the next's; 0 means packed.
    pub stride: usize,
}

/// Rows that are written, as [`Rows`]. Elements between rows are never touched.
#[derive(Debug)]
pub struct RowsMut<'a> {
    /// The elements.
    pub data: RowDataMut<'a>,
    /// Elements from one row's start to the next's; 0 means packed.
    pub stride: usize,
}

impl<'a> Rows<'a> {
    /// Rows of `data` with `stride` elements between row starts (0: packed).
    pub fn new(data: impl Into<RowData<'a>>, stride: usize) -> Self {
        Rows {
            data: data.into(),
            stride,
        }
    }

    /// Packed rows.
    pub fn packed(data: impl Into<RowData<'a>>) -> Self {
        Rows::new(data, 0)
    }
}

impl<'a> RowsMut<'a> {
    /// Rows of `data` with `stride` elements between row starts (0: packed).
    pub fn new(data: impl Into<RowDataMut<'a>>, stride: usize) -> Self {
        RowsMut {
            data: data.into(),
            stride,
        }
    }

    /// Packed rows.
    pub fn packed(data: impl Into<RowDataMut<'a>>) -> Self {
        RowsMut::new(data, 0)
    }
}

/// An input of a row norm (`x` or `residual`): read only, or writable so that an output may
/// replace it ([`RowTarget::X`], [`RowTarget::Residual`]).
#[derive(Debug)]
pub enum RowInput<'a> {
    /// Read only.
    Read(Rows<'a>),
    /// Read, and writable so that an output may replace it.
    Write(RowsMut<'a>),
}

impl<'a> From<Rows<'a>> for RowInput<'a> {
    fn from(r: Rows<'a>) -> Self {
        RowInput::Read(r)
    }
}

impl<'a> From<RowsMut<'a>> for RowInput<'a> {
    fn from(r: RowsMut<'a>) -> Self {
        RowInput::Write(r)
    }
}

/// Where an output of a row norm goes: rows of its own, or exactly over an input (which must
/// then be given as [`RowInput::Write`]; the output takes its type and stride).
#[derive(Debug)]
pub enum RowTarget<'a> {
    /// Rows of its own.
    Into(RowsMut<'a>),
    /// Over `x` (`y` in place; or `sum` into `x`).
    X,
    /// Over `residual` (`sum` only).
    Residual,
}

impl<'a> From<RowsMut<'a>> for RowTarget<'a> {
    fn from(r: RowsMut<'a>) -> Self {
        RowTarget::Into(r)
    }
}

/// The tensors of a row norm (`layernorm::forward_rows`, `rmsnorm::forward_rows`): the value
/// normalized is `h = (x + residual) + bias` (absent terms skipped); with `sum`, `h` is rounded
/// to the sum's type, stored there, and that rounded value is normalized. `y` of type I8 is
/// quantized per row with its scale in `y_scale` (one per row, required exactly then).
///
/// Made with [`RowNormIo::new`] and the methods that add the optional terms; more terms may be
/// added.
#[derive(Debug)]
#[non_exhaustive]
pub struct RowNormIo<'a> {
    /// The rows normalized (before the residual and bias are added).
    pub x: RowInput<'a>,
    /// Rows added to `x`.
    pub residual: Option<RowInput<'a>>,
    /// `cols` floats added to every row.
    pub bias: Option<&'a [f32]>,
    /// Where the sum `h` is stored, rounded to the target's type.
    pub sum: Option<RowTarget<'a>>,
    /// The normalized rows.
    pub y: RowTarget<'a>,
    /// One scale per row when `y` is I8: `y * scale` approximates the normalized row.
    pub y_scale: Option<&'a mut [f32]>,
}

impl<'a> RowNormIo<'a> {
    /// `y = norm(x)`; add the other terms with the methods below.
    pub fn new(x: impl Into<RowInput<'a>>, y: impl Into<RowTarget<'a>>) -> Self {
        RowNormIo {
            x: x.into(),
            residual: None,
            bias: None,
            sum: None,
            y: y.into(),
            y_scale: None,
        }
    }

    /// Adds `residual` to `x` before normalizing.
    pub fn residual(mut self, residual: impl Into<RowInput<'a>>) -> Self {
        self.residual = Some(residual.into());
        self
    }

    /// Adds `bias` (`cols` floats) to every row after the residual.
    pub fn bias(mut self, bias: &'a [f32]) -> Self {
        self.bias = Some(bias);
        self
    }

    /// Stores the sum `h`, rounded to the target's type, which is then what is normalized.
    pub fn sum(mut self, sum: impl Into<RowTarget<'a>>) -> Self {
        self.sum = Some(sum.into());
        self
    }

    /// Where each row's scale goes when `y` is I8.
    pub fn y_scale(mut self, y_scale: &'a mut [f32]) -> Self {
        self.y_scale = Some(y_scale);
        self
    }
}

/// A typed element pointer of a strided tensor.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowPtr {
    F32(*mut f32),
    Bf16(*mut bf16),
    F16(*mut f16),
    I8(*mut i8),
}

impl RowPtr {
    pub(crate) fn dtype(self) -> Dtype {
        match self {
            RowPtr::F32(_) => Dtype::F32,
            RowPtr::Bf16(_) => Dtype::Bf16,
            RowPtr::F16(_) => Dtype::F16,
            RowPtr::I8(_) => Dtype::I8,
        }
    }

    pub(crate) fn addr(self) -> *const u8 {
        match self {
            RowPtr::F32(p) => p as *const u8,
            RowPtr::Bf16(p) => p as *const u8,
            RowPtr::F16(p) => p as *const u8,
            RowPtr::I8(p) => p as *const u8,
        }
    }
}

/// Strided rows that parallel tasks share, each taking the rows it owns: `rows` rows of `cols`
/// elements, `stride` apart (`stride >= cols`, so rows never overlap). Made from a borrowed
/// tensor (or, at the C boundary, from checked pointers), valid for `'a`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StridedRows<'a> {
    ptr: RowPtr,
    rows: usize,
    cols: usize,
    stride: usize,
    _borrow: PhantomData<&'a mut [u8]>,
}

// SAFETY: a StridedRows is a borrowed tensor of `Send + Sync` elements; the methods that make
// references from it are unsafe and require callers to keep the rows of different threads
// disjoint.
unsafe impl Send for StridedRows<'_> {}
// SAFETY: as above.
unsafe impl Sync for StridedRows<'_> {}

/// Elements a tensor of strided rows spans: `(rows - 1) * stride + cols` (0 if empty), or
/// `None` on overflow.
pub(crate) fn extent(rows: usize, cols: usize, stride: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(stride)?.checked_add(cols)
}

impl<'a> StridedRows<'a> {
    /// # Safety
    /// `ptr` is valid for reads (and for writes if any row is taken with `row_mut`) of
    /// `extent(rows, cols, stride)` elements for `'a`, aligned, and `stride >= cols`.
    pub(crate) unsafe fn new(ptr: RowPtr, rows: usize, cols: usize, stride: usize) -> Self {
        debug_assert!(stride >= cols);
        StridedRows {
            ptr,
            rows,
            cols,
            stride,
            _borrow: PhantomData,
        }
    }

    /// Rows read from borrowed data (its length checked by the caller to cover the extent).
    pub(crate) fn from_read(d: RowData<'a>, rows: usize, cols: usize, stride: usize) -> Self {
        assert!(d.len() >= extent(rows, cols, stride).unwrap_or(usize::MAX) && stride >= cols);
        let ptr = match d {
            RowData::F32(s) => RowPtr::F32(s.as_ptr().cast_mut()),
            RowData::Bf16(s) => RowPtr::Bf16(s.as_ptr().cast_mut()),
            RowData::F16(s) => RowPtr::F16(s.as_ptr().cast_mut()),
        };
        // SAFETY: the slice covers the extent (asserted) for 'a; rows made from a read-only
        // tensor are only ever read (the row norms write only through writable tensors).
        unsafe { StridedRows::new(ptr, rows, cols, stride) }
    }

    /// Rows of borrowed writable data: one raw pointer from which every read and write of the
    /// call is derived (an input an output replaces is read and written through it).
    pub(crate) fn from_write(d: RowDataMut<'a>, rows: usize, cols: usize, stride: usize) -> Self {
        assert!(d.len() >= extent(rows, cols, stride).unwrap_or(usize::MAX) && stride >= cols);
        let ptr = match d {
            RowDataMut::F32(s) => RowPtr::F32(s.as_mut_ptr()),
            RowDataMut::Bf16(s) => RowPtr::Bf16(s.as_mut_ptr()),
            RowDataMut::F16(s) => RowPtr::F16(s.as_mut_ptr()),
            RowDataMut::I8(s) => RowPtr::I8(s.as_mut_ptr()),
        };
        // SAFETY: the exclusive borrow covers the extent (asserted) for 'a.
        unsafe { StridedRows::new(ptr, rows, cols, stride) }
    }

    /// [`StridedRows::from_write`] of a borrowed [`RowsMut`].
    pub(crate) fn write(r: &'a mut RowsMut<'_>, rows: usize, cols: usize, stride: usize) -> Self {
        let d = match &mut r.data {
            RowDataMut::F32(s) => RowDataMut::F32(s),
            RowDataMut::Bf16(s) => RowDataMut::Bf16(s),
            RowDataMut::F16(s) => RowDataMut::F16(s),
            RowDataMut::I8(s) => RowDataMut::I8(s),
        };
        StridedRows::from_write(d, rows, cols, stride)
    }

    pub(crate) fn stride(&self) -> usize {
        self.stride
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn dtype(&self) -> Dtype {
        self.ptr.dtype()
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of the elements of the rows (`rows * cols` elements, the gaps between rows not
    /// counted).
    pub(crate) fn bytes(&self) -> usize {
        self.rows
            .saturating_mul(self.cols)
            .saturating_mul(self.dtype().bytes())
    }

    /// Whether `other` is the same tensor (address, stride and type): an output that replaces
    /// an input.
    pub(crate) fn same(&self, other: &StridedRows<'_>) -> bool {
        self.ptr.addr() == other.ptr.addr()
            && self.stride == other.stride
            && self.dtype() == other.dtype()
    }

    fn offset(&self, r: usize) -> usize {
        assert!(r < self.rows);
        r * self.stride
    }

    /// Row `r`, to read.
    ///
    /// # Safety
    /// No mutable row over the same memory may be alive while the returned slice is. Not for
    /// I8 tensors (outputs only).
    #[inline(always)]
    pub(crate) unsafe fn row(&self, r: usize) -> RowData<'a> {
        let (o, n) = (self.offset(r), self.cols);
        // SAFETY: row r lies within the extent the constructor's caller vouched for; the caller
        // guarantees no writer to it.
        unsafe {
            match self.ptr {
                RowPtr::F32(p) => RowData::F32(std::slice::from_raw_parts(p.add(o), n)),
                RowPtr::Bf16(p) => RowData::Bf16(std::slice::from_raw_parts(p.add(o), n)),
                RowPtr::F16(p) => RowData::F16(std::slice::from_raw_parts(p.add(o), n)),
                RowPtr::I8(_) => unreachable!("an i8 tensor is never read"),
            }
        }
    }

    /// Row `r`, to write.
    ///
    /// # Safety
    /// No other reference to row `r`'s memory may be alive while the returned slice is (each
    /// task writes only its own rows), and the tensor was made writable.
    #[inline(always)]
    pub(crate) unsafe fn row_mut(&self, r: usize) -> RowDataMut<'a> {
        let (o, n) = (self.offset(r), self.cols);
        // SAFETY: as for `row`, with exclusive access guaranteed by the caller.
        unsafe {
            match self.ptr {
                RowPtr::F32(p) => RowDataMut::F32(std::slice::from_raw_parts_mut(p.add(o), n)),
                RowPtr::Bf16(p) => RowDataMut::Bf16(std::slice::from_raw_parts_mut(p.add(o), n)),
                RowPtr::F16(p) => RowDataMut::F16(std::slice::from_raw_parts_mut(p.add(o), n)),
                RowPtr::I8(p) => RowDataMut::I8(std::slice::from_raw_parts_mut(p.add(o), n)),
            }
        }
    }

    /// Hints that the first `max_bytes` of row `r` (if it exists) will be read soon.
    #[inline(always)]
    pub(crate) fn prefetch<V: F32Vec>(&self, r: usize, max_bytes: usize) {
        if r >= self.rows {
            return;
        }
        let bytes = self.dtype().bytes();
        let start = self.ptr.addr().wrapping_add(r * self.stride * bytes);
        for line in (0..(self.cols * bytes).min(max_bytes)).step_by(crate::simd::LINE_BYTES) {
            V::prefetch(start.wrapping_add(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In place, the input slices and the parts of a shared view come from the one `&mut`
    /// borrow: reading the input before and after a part is written is defined. Miri checks it
    /// under Stacked Borrows in CI (`cargo miri test --lib io::tests`).
    #[test]
    fn shared_in_place_input_stays_valid() {
        let mut data = [1.0f32, 2.0, 3.0, 4.0];
        let mut io = InOut::InPlace(&mut data[..]);
        let shared = io.share();
        // SAFETY: the input slices and the part below are never alive together.
        unsafe {
            assert_eq!(shared.input(0..2), &[1.0, 2.0]);
            match shared.part(2..4) {
                RowIo::InPlace(b) => b[0] = 5.0,
                RowIo::Separate(..) => panic!("in place"),
            }
            assert_eq!(shared.input(2..4), &[5.0, 4.0]);
        }
    }
}
