//! Shared pieces of the fuzz targets: a reader of the fuzz input, scalar generators, and an arena
//! of separately allocated, sentinel-filled buffers placed as the input asks (own memory,
//! misaligned, NULL, in place, or overlapping another buffer), with the contract's expected
//! NULL / MISALIGNED / ALIAS outcome and byte-for-byte snapshots.
#![allow(dead_code)]

use normkit::ffi::nk_status;
use std::alloc::{Layout, alloc, dealloc};

/// Reads the fuzz input front to back; zeros once it runs out.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    pub fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
    /// A size in `0..=max`.
    pub fn size(&mut self, max: usize) -> usize {
        usize::from(self.byte()) % (max + 1)
    }
    /// A scalar: mostly `usual`, sometimes an edge value (NaN, inf, negative, zero, huge) or raw
    /// bits.
    pub fn scalar(&mut self, usual: f32) -> f32 {
        match self.byte() % 16 {
            0..=7 => usual,
            8 => f32::NAN,
            9 => f32::INFINITY,
            10 => f32::NEG_INFINITY,
            11 => -usual - 1.0,
            12 => 0.0,
            13 => -0.0,
            14 => 3.0e38,
            _ => self.f32(),
        }
    }
    /// A probability: mostly in [0, 1] with the ends, sometimes outside or NaN.
    pub fn probability(&mut self) -> f32 {
        match self.byte() % 12 {
            0 => 0.0,
            1 => 1.0,
            2 => -0.0,
            3 => f32::NAN,
            4 => -0.25,
            5 => 1.0 + f32::EPSILON,
            6 => 1.0 - f32::EPSILON / 2.0,
            7 => self.f32(),
            _ => f32::from(self.byte()) / 255.0,
        }
    }
    /// Flags: mostly from `known`, sometimes with unknown bits.
    pub fn flags(&mut self, known: u32) -> u32 {
        let f = u32::from(self.byte()) & known;
        match self.byte() % 8 {
            0 => f | (1 << (self.byte() % 32)),
            1 => self.u32(),
            _ => f,
        }
    }
    /// A layout value: mostly 0 or 1, sometimes outside the enum.
    pub fn layout(&mut self) -> i32 {
        match self.byte() % 10 {
            0 => 2,
            1 => -1,
            2 => i32::MAX,
            b => i32::from(b & 1),
        }
    }
    /// A data value for a generated buffer.
    pub fn value(&mut self, mode: u8, i: usize) -> f32 {
        let pattern = (i % 7) as f32 - 3.0;
        match mode % 8 {
            0..=3 => pattern + f32::from(self.byte() as i8) / 16.0,
            4 => 1.0e4 + pattern + f32::from(self.byte() as i8) / 64.0,
            5 => (pattern + f32::from(self.byte() as i8)) * 1.0e-3,
            6 => f32::from(self.byte() as i8) * 37.5,
            _ => self.f32(),
        }
    }
}

/// Element kinds of a buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    F32,
    F64,
    U8,
    /// 2-byte elements (bf16, f16).
    U16,
}

impl Kind {
    pub fn size(self) -> usize {
        match self {
            Kind::F32 => 4,
            Kind::F64 => 8,
            Kind::U8 => 1,
            Kind::U16 => 2,
        }
    }
}

/// What fills a buffer before the call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fill {
    /// Data from the fuzz input (`Input::value`).
    Data,
    /// Positive values (variances, inverse standard deviations, M2).
    Positive,
    /// Raw bytes from the fuzz input (masks).
    Bytes,
    /// A sentinel pattern (outputs).
    Sentinel,
}

/// Where a buffer's pointer is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    /// Its own allocation, `misalign` bytes past an 8-byte boundary.
    Own { misalign: usize },
    /// `shift` bytes into buffer `base`'s pointer.
    At { base: usize, shift: usize },
}

struct Slot {
    name: &'static str,
    kind: Kind,
    len: usize,
    writes: bool,
    required: bool,
    /// The input this output may replace exactly.
    replaces: Option<usize>,
    fill: Fill,
    null: bool,
    place: Place,
}

struct Mem {
    ptr: *mut u8,
    layout: Layout,
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `Arena::build`.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// The buffers of one call.
#[derive(Default)]
pub struct Arena {
    slots: Vec<Slot>,
    mems: Vec<Option<Mem>>,
    before: Vec<Vec<u8>>,
    ptrs: Vec<*mut u8>,
}

pub type Buf = usize;

impl Arena {
    fn add(
        &mut self,
        name: &'static str,
        kind: Kind,
        len: usize,
        writes: bool,
        required: bool,
        fill: Fill,
    ) -> Buf {
        self.slots.push(Slot {
            name,
            kind,
            len,
            writes,
            required,
            replaces: None,
            fill,
            null: false,
            place: Place::Own { misalign: 0 },
        });
        self.slots.len() - 1
    }
    /// A required input.
    pub fn input(&mut self, name: &'static str, kind: Kind, len: usize, fill: Fill) -> Buf {
        self.add(name, kind, len, false, true, fill)
    }
    /// An optional input (NULL allowed).
    pub fn opt_input(&mut self, name: &'static str, kind: Kind, len: usize, fill: Fill) -> Buf {
        self.add(name, kind, len, false, false, fill)
    }
    /// A required output.
    pub fn output(&mut self, name: &'static str, kind: Kind, len: usize) -> Buf {
        self.add(name, kind, len, true, true, Fill::Sentinel)
    }
    /// An optional output.
    pub fn opt_output(&mut self, name: &'static str, kind: Kind, len: usize) -> Buf {
        self.add(name, kind, len, true, false, Fill::Sentinel)
    }
    /// A required buffer the call reads and writes.
    pub fn inout(&mut self, name: &'static str, kind: Kind, len: usize, fill: Fill) -> Buf {
        self.add(name, kind, len, true, true, fill)
    }
    /// An optional buffer the call reads and writes.
    pub fn opt_inout(&mut self, name: &'static str, kind: Kind, len: usize, fill: Fill) -> Buf {
        self.add(name, kind, len, true, false, fill)
    }
    /// Marks output `out` as allowed to be exactly input `input` (in place).
    pub fn replaces(&mut self, out: Buf, input: Buf) {
        self.slots[out].replaces = Some(input);
    }

    /// Chooses every buffer's placement from the fuzz input: mostly its own aligned memory;
    /// sometimes NULL, misaligned, in place on the input it replaces, or overlapping another
    /// buffer. `wild` is how often (out of 256) a buffer is placed unusually.
    pub fn place(&mut self, input: &mut Input<'_>, wild: u8) {
        for i in 0..self.slots.len() {
            let optional = !self.slots[i].required;
            if let Some(r) = self.slots[i].replaces
                && matches!(self.slots[r].place, Place::Own { .. })
                && input.byte() % 3 == 0
            {
                self.slots[i].place = Place::At { base: r, shift: 0 };
            }
            if optional && input.byte() % 3 == 0 {
                self.slots[i].null = true;
            }
            if input.byte() >= wild {
                continue;
            }
            match input.byte() % 4 {
                0 => self.slots[i].null = true,
                1 => {
                    let misalign =
                        1 + usize::from(input.byte()) % (self.slots[i].kind.size() * 2 - 1);
                    self.slots[i].place = Place::Own { misalign };
                }
                _ if i > 0 => {
                    // Overlap an earlier buffer that has its own memory.
                    let base = usize::from(input.byte()) % i;
                    if let Place::Own { .. } = self.slots[base].place {
                        let shift = usize::from(input.byte())
                            % (self.slots[base].len * self.slots[base].kind.size() + 1);
                        self.slots[i].place = Place::At { base, shift };
                    }
                }
                _ => {}
            }
        }
    }

    /// Allocates and fills every buffer (exact sizes, so that ASan sees any overrun).
    pub fn build(&mut self, input: &mut Input<'_>) {
        let n = self.slots.len();
        let mut need = vec![0usize; n];
        for (i, s) in self.slots.iter().enumerate() {
            if let Place::Own { misalign } = s.place {
                need[i] = need[i].max(misalign + s.len * s.kind.size());
            }
        }
        for s in &self.slots {
            if let Place::At { base, shift } = s.place {
                let Place::Own { misalign } = self.slots[base].place else {
                    unreachable!()
                };
                need[base] = need[base].max(misalign + shift + s.len * s.kind.size());
            }
        }
        self.mems = (0..n).map(|_| None).collect();
        self.ptrs = vec![std::ptr::null_mut(); n];
        for i in 0..n {
            if let Place::Own { misalign } = self.slots[i].place {
                let layout = Layout::from_size_align(need[i].max(1), 8).unwrap();
                // SAFETY: the size is not zero.
                let ptr = unsafe { alloc(layout) };
                assert!(!ptr.is_null());
                let mode = input.byte();
                let bytes = need[i].max(1);
                let fill = self.slots[i].fill;
                let kind = self.slots[i].kind;
                let mut content = vec![0u8; bytes];
                // Sentinel everywhere, then the slot's values at its own position.
                for (j, b) in content.iter_mut().enumerate() {
                    *b = [0xA5, 0x5A, 0xC3, 0x7F][j % 4];
                }
                let start = misalign;
                let len = self.slots[i].len;
                for e in 0..len {
                    let at = start + e * kind.size();
                    match (fill, kind) {
                        (Fill::Sentinel, _) => {}
                        (Fill::Bytes, _) | (_, Kind::U8) => content[at] = input.byte(),
                        (_, Kind::U16) => {
                            content[at] = input.byte();
                            content[at + 1] = input.byte();
                        }
                        (Fill::Data, Kind::F32) => {
                            content[at..at + 4].copy_from_slice(&input.value(mode, e).to_le_bytes())
                        }
                        (Fill::Data, Kind::F64) => content[at..at + 8]
                            .copy_from_slice(&f64::from(input.value(mode, e)).to_le_bytes()),
                        (Fill::Positive, Kind::F32) => content[at..at + 4]
                            .copy_from_slice(&positive(input, mode).to_le_bytes()),
                        (Fill::Positive, Kind::F64) => content[at..at + 8]
                            .copy_from_slice(&f64::from(positive(input, mode)).to_le_bytes()),
                    }
                }
                // SAFETY: `ptr` is valid for `bytes` bytes.
                unsafe { std::ptr::copy_nonoverlapping(content.as_ptr(), ptr, bytes) };
                self.mems[i] = Some(Mem { ptr, layout });
                self.ptrs[i] = unsafe { ptr.add(misalign) };
            }
        }
        for i in 0..n {
            if let Place::At { base, shift } = self.slots[i].place {
                self.ptrs[i] = unsafe { self.ptrs[base].add(shift) };
            }
        }
        self.before = self.snapshot();
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        self.mems
            .iter()
            .map(|m| match m {
                // SAFETY: the allocation is valid for its layout's size.
                Some(m) => unsafe { std::slice::from_raw_parts(m.ptr, m.layout.size()) }.to_vec(),
                None => Vec::new(),
            })
            .collect()
    }

    /// The pointer passed for a buffer (NULL if chosen so).
    pub fn ptr<T>(&self, b: Buf) -> *mut T {
        if self.slots[b].null {
            std::ptr::null_mut()
        } else {
            self.ptrs[b] as *mut T
        }
    }
    pub fn is_null(&self, b: Buf) -> bool {
        self.slots[b].null
    }
    /// Whether the buffer is exactly the input it replaces (in place).
    pub fn in_place(&self, b: Buf) -> bool {
        !self.slots[b].null
            && self.slots[b]
                .replaces
                .is_some_and(|r| !self.slots[r].null && self.ptrs[r] == self.ptrs[b])
    }

    /// The contract's status from the pointers alone, for the checks that come before and
    /// after the call's own size and argument checks: `(null, misaligned, alias)`.
    pub fn pointer_errors(&self) -> (bool, bool, bool) {
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&i| !self.slots[i].null)
            .collect();
        let null = self.slots.iter().any(|s| s.null && s.required && s.len > 0);
        let misaligned = live
            .iter()
            .any(|&i| !(self.ptrs[i] as usize).is_multiple_of(self.slots[i].kind.size()));
        let mut alias = false;
        for (k, &a) in live.iter().enumerate() {
            for &b in &live[k + 1..] {
                let (sa, sb) = (&self.slots[a], &self.slots[b]);
                let (la, lb) = (sa.len * sa.kind.size(), sb.len * sb.kind.size());
                if !(sa.writes || sb.writes) || la == 0 || lb == 0 {
                    continue;
                }
                let (pa, pb) = (self.ptrs[a] as usize, self.ptrs[b] as usize);
                if pa < pb + lb && pb < pa + la {
                    let exact = pa == pb && la == lb;
                    let allowed = exact && (sa.replaces == Some(b) || sb.replaces == Some(a));
                    alias |= !allowed;
                }
            }
        }
        (null, misaligned, alias)
    }

    /// Asserts that no byte of any buffer changed.
    pub fn assert_unchanged(&self, what: &str) {
        let now = self.snapshot();
        for (i, (a, b)) in self.before.iter().zip(&now).enumerate() {
            assert!(a == b, "{what}: buffer {} changed", self.slots[i].name);
        }
    }

    /// After a successful call: asserts that only bytes of output buffers changed.
    pub fn assert_only_outputs_changed(&self) {
        let now = self.snapshot();
        for (m, (a, b)) in self.before.iter().zip(&now).enumerate() {
            let Some(mem) = &self.mems[m] else { continue };
            if a == b {
                continue;
            }
            // The byte ranges of this allocation that outputs cover; every byte outside them
            // (compared a range at a time) must be unchanged.
            let (base, size) = (mem.ptr as usize, a.len());
            let mut covered: Vec<(usize, usize)> = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.writes && !s.null)
                .filter_map(|(i, s)| {
                    let p = self.ptrs[i] as usize;
                    let end = p + s.len * s.kind.size();
                    (p < base + size && end > base)
                        .then(|| (p.max(base) - base, end.min(base + size) - base))
                })
                .collect();
            covered.sort_unstable();
            covered.push((size, size));
            let mut from = 0;
            for (start, end) in covered {
                if from < start && a[from..start] != b[from..start] {
                    let j = (from..start).find(|&j| a[j] != b[j]).unwrap();
                    panic!(
                        "byte {j} of {} changed outside every output",
                        self.slots[m].name
                    );
                }
                from = from.max(end);
            }
        }
    }

    /// Overwrites the start of a buffer (not NULL) with `bytes` (at most its length), after
    /// `build`: the values a call reads, made by the target itself (typed data). The snapshot
    /// taken before the call is taken again.
    pub fn set_bytes(&mut self, b: Buf, bytes: &[u8]) {
        let s = &self.slots[b];
        assert!(!s.null && bytes.len() <= s.len * s.kind.size());
        // SAFETY: the buffer is valid for `len * size` bytes from its pointer.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptrs[b], bytes.len()) };
        self.before = self.snapshot();
    }
    /// A buffer's bytes before the call (from the snapshot) and now.
    pub fn before_bytes(&self, b: Buf) -> Vec<u8> {
        self.read_at(b, &self.before, self.slots[b].kind.size())
    }
    pub fn now_bytes(&self, b: Buf) -> Vec<u8> {
        self.read_at(b, &self.snapshot(), self.slots[b].kind.size())
    }

    /// A buffer's values before the call (from the snapshot).
    pub fn before_f32(&self, b: Buf) -> Vec<f32> {
        self.read_at(b, &self.before, 4)
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    pub fn before_f64(&self, b: Buf) -> Vec<f64> {
        self.read_at(b, &self.before, 8)
            .chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    pub fn before_u8(&self, b: Buf) -> Vec<u8> {
        self.read_at(b, &self.before, 1)
    }
    /// A buffer's values now.
    pub fn now_f32(&self, b: Buf) -> Vec<f32> {
        let now = self.snapshot();
        self.read_at(b, &now, 4)
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    pub fn now_f64(&self, b: Buf) -> Vec<f64> {
        let now = self.snapshot();
        self.read_at(b, &now, 8)
            .chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    pub fn now_u8(&self, b: Buf) -> Vec<u8> {
        let now = self.snapshot();
        self.read_at(b, &now, 1)
    }

    fn read_at(&self, b: Buf, from: &[Vec<u8>], size: usize) -> Vec<u8> {
        let s = &self.slots[b];
        if s.null {
            return Vec::new();
        }
        let base = match s.place {
            Place::Own { .. } => b,
            Place::At { base, .. } => base,
        };
        let start = self.ptrs[b] as usize - self.mems[base].as_ref().unwrap().ptr as usize;
        from[base][start..start + s.len * size].to_vec()
    }
}

fn positive(input: &mut Input<'_>, mode: u8) -> f32 {
    match mode % 8 {
        7 => input.f32(),
        6 => f32::from(input.byte()) * 1.0e3,
        _ => 0.05 + f32::from(input.byte()) / 32.0,
    }
}

/// The contract's error precedence: the first of the errors that apply, or OK.
pub fn expected(
    null: bool,
    overflow: bool,
    shape: bool,
    argument: bool,
    misaligned: bool,
    alias: bool,
) -> nk_status {
    use nk_status::*;
    [
        (null, NK_ERR_NULL_POINTER),
        (overflow, NK_ERR_OVERFLOW),
        (shape, NK_ERR_BAD_SHAPE),
        (argument, NK_ERR_BAD_ARGUMENT),
        (misaligned, NK_ERR_MISALIGNED),
        (alias, NK_ERR_ALIAS),
    ]
    .into_iter()
    .find(|(c, _)| *c)
    .map_or(NK_OK, |(_, s)| s)
}

/// Checks a call's status against the expected one; on error, that nothing changed; on
/// success, that only outputs changed. Returns whether the call succeeded.
pub fn check_status(arena: &Arena, what: &str, status: nk_status, expect: nk_status) -> bool {
    assert_eq!(status, expect, "{what}: status");
    if status != nk_status::NK_OK {
        arena.assert_unchanged(what);
        return false;
    }
    arena.assert_only_outputs_changed();
    true
}

/// `eps` (or any non-negative finite scalar) valid?
pub fn bad_eps(eps: f32) -> bool {
    !(eps.is_finite() && eps >= 0.0)
}

/// Whether `got` agrees with the float64 `want`, allowing `tol * magnitude` (magnitude: the
/// size of the terms the result was computed from). Non-finite or huge references are skipped.
pub fn close(got: f64, want: f64, magnitude: f64, tol: f64) -> bool {
    if !want.is_finite() || !magnitude.is_finite() || magnitude > 1.0e30 || want.abs() > 1.0e30 {
        return true;
    }
    (got - want).abs() <= tol * (magnitude + want.abs()) + 1.0e-30
}

/// Whether every value is finite.
pub fn finite32(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}
pub fn finite64(v: &[f64]) -> bool {
    v.iter().all(|x| x.is_finite())
}

/// Asserts `close` for each element, with a message.
#[track_caller]
pub fn assert_close(what: &str, i: usize, got: f64, want: f64, magnitude: f64, tol: f64) {
    assert!(
        close(got, want, magnitude, tol),
        "{what}[{i}]: got {got}, want {want} (magnitude {magnitude})"
    );
}

/// The context of a call: the default (NULL), a two-thread context on AVX2 (the default where
/// the CPU lacks AVX2, or where AVX2 is already its best ISA), a one-thread context, or a
/// three-thread context on the portable ISA (created once per process). On a CPU with AVX-512
/// one build thus fuzzes the kernels on all three of its ISAs.
pub fn context(choice: u8) -> *mut normkit::ffi::nk_context {
    use normkit::ffi::{nk_context_create, nk_context_destroy, nk_context_set_isa};
    use std::sync::OnceLock;
    static AVX2: OnceLock<usize> = OnceLock::new();
    static ONE: OnceLock<usize> = OnceLock::new();
    static PORTABLE: OnceLock<usize> = OnceLock::new();
    // A context of `threads` on `isa`, or NULL (the default context) if the CPU lacks `isa`.
    let make = |threads: usize, isa: i32| {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: `ctx` is valid for writing one pointer; the context lives for the process,
        // or is destroyed at once if the ISA is unsupported.
        unsafe {
            assert_eq!(nk_context_create(threads, &mut ctx), nk_status::NK_OK);
            match nk_context_set_isa(ctx, isa) {
                nk_status::NK_OK => {}
                nk_status::NK_ERR_UNSUPPORTED => {
                    nk_context_destroy(ctx);
                    ctx = std::ptr::null_mut();
                }
                other => panic!("nk_context_set_isa({isa}): {other:?}"),
            }
        }
        ctx as usize
    };
    match choice % 4 {
        0 => std::ptr::null_mut(),
        1 => *AVX2.get_or_init(|| make(2, 2)) as *mut _,
        2 => *ONE.get_or_init(|| make(1, 0)) as *mut _,
        _ => *PORTABLE.get_or_init(|| make(3, 1)) as *mut _,
    }
}

/// Whether values are small enough for the float64 references to stand for float32 results
/// (finite, and far from float32 overflow once squared or summed).
pub fn sane32(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite() && x.abs() <= 1.0e15)
}
pub fn sane64(v: &[f64]) -> bool {
    v.iter().all(|x| x.is_finite() && x.abs() <= 1.0e15)
}

/// Element `(n, c, s)`'s index for a layout (0: NCS, 1: NSC).
pub fn index(layout: i32, dims: (usize, usize, usize), n: usize, c: usize, s: usize) -> usize {
    let (_, channels, spatial) = dims;
    if layout == 0 {
        (n * channels + c) * spatial + s
    } else {
        (n * spatial + s) * channels + c
    }
}

/// A size far beyond memory, for the overflow checks.
pub fn huge(input: &mut Input<'_>) -> usize {
    match input.byte() % 4 {
        0 => usize::MAX,
        1 => usize::MAX / 3,
        2 => 1 << 62,
        _ => (isize::MAX as usize) / 2 + 1,
    }
}

/// For a call with a size beyond memory: on error nothing changed; success only where
/// `ok_allowed` (a zero size makes the tensor empty), and then only outputs changed.
pub fn check_huge(arena: &Arena, what: &str, status: nk_status, ok_allowed: bool) {
    if status == nk_status::NK_OK {
        assert!(ok_allowed, "{what}: a size beyond memory was accepted");
        arena.assert_only_outputs_changed();
    } else {
        arena.assert_unchanged(what);
    }
}
