//! The dropout family through its C functions (`normkit::ffi::nk_*`, called from Rust): the
//! Philox4x32-10 generator against Random123's published known answers; masks and outputs of
//! every variant against the plain reference of `tests/common/dropout_reference.rs` for many
//! (n, p, seed, offset); a tensor cut into pieces across calls giving what one call gives; every
//! ISA of this CPU, 1, 2 and 3 threads and executor contexts giving the same bits; the statistics
//! of the masks and noises; backward against the forward's factor; NaN and infinities at dropped
//! elements; in place against out of place; and the error contract, with every buffer checked
//! byte for byte.

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::prop::config;

use common::arena::{Arena, write};
use common::check::isa_value;
use common::data::Gen;
use common::dropout_reference as r;
use normkit::Isa;
use normkit::dropout::Stream;
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, c_void};
use std::ptr::{null, null_mut};

// ---------------------------------------------------------------------------------------------
// Contexts.

/// A context from `nk_context_create` or `nk_context_create_with_executor` (destroyed on drop),
/// or the default context (NULL).
struct Ctx {
    ptr: *mut nk_context,
    name: String,
}

impl Ctx {
    fn new(threads: usize, isa: Isa) -> Ctx {
        let mut ptr = null_mut();
        // SAFETY: a valid out pointer.
        let status = unsafe { nk_context_create(threads, &mut ptr) };
        assert_eq!(status, NK_OK, "nk_context_create({threads})");
        // SAFETY: a live context.
        let status = unsafe { nk_context_set_isa(ptr, isa_value(isa)) };
        assert_eq!(status, NK_OK, "nk_context_set_isa({isa:?})");
        Ctx {
            ptr,
            name: format!("{isa:?}, {threads} thread(s)"),
        }
    }

    /// A context from `nk_context_create_with_executor`: every task on the calling thread, last
    /// first, or on 3 threads of the executor's own (`threaded`).
    fn executor(threaded: bool, isa: Isa) -> Ctx {
        let executor = nk_executor {
            parallel_for: Some(if threaded {
                threaded_executor
            } else {
                reversed_executor
            }),
            user: null_mut(),
            concurrency: if threaded { 3 } else { 1 },
        };
        let mut ptr = null_mut();
        // SAFETY: valid pointers; the executors keep no state.
        let status = unsafe { nk_context_create_with_executor(&executor, &mut ptr) };
        assert_eq!(status, NK_OK, "nk_context_create_with_executor");
        // SAFETY: a live context.
        let status = unsafe { nk_context_set_isa(ptr, isa_value(isa)) };
        assert_eq!(status, NK_OK, "nk_context_set_isa({isa:?})");
        let how = if threaded {
            "executor on 3 threads"
        } else {
            "executor, tasks last first"
        };
        Ctx {
            ptr,
            name: format!("{isa:?}, {how}"),
        }
    }

    fn default_context() -> Ctx {
        Ctx {
            ptr: null_mut(),
            name: "default context".into(),
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: a context from nk_context_create, or NULL (a no-op).
        unsafe { nk_context_destroy(self.ptr) };
    }
}

/// A task handed to an executor, callable from the executor's threads.
#[derive(Clone, Copy)]
struct HostTask {
    run: unsafe extern "C" fn(*mut c_void, usize),
    arg: *mut c_void,
}

// SAFETY: the executor contract lets tasks run on any of the host's threads.
unsafe impl Send for HostTask {}
// SAFETY: as above.
unsafe impl Sync for HostTask {}

impl HostTask {
    fn new(task: nk_task_fn, arg: *mut c_void) -> HostTask {
        HostTask {
            run: task.expect("a task function"),
            arg,
        }
    }

    fn call(&self, index: usize) {
        // SAFETY: the task and argument of the `parallel_for` that is running.
        unsafe { (self.run)(self.arg, index) }
    }
}

/// An executor running every task on the calling thread, last first.
unsafe extern "C" fn reversed_executor(
    _user: *mut c_void,
    count: usize,
    task: nk_task_fn,
    arg: *mut c_void,
) {
    let task = HostTask::new(task, arg);
    (0..count).rev().for_each(|i| task.call(i));
}

/// An executor running the tasks on 3 scoped threads, thread `t` taking `t`, `t + 3`, ...
unsafe extern "C" fn threaded_executor(
    _user: *mut c_void,
    count: usize,
    task: nk_task_fn,
    arg: *mut c_void,
) {
    let task = HostTask::new(task, arg);
    std::thread::scope(|s| {
        for t in 0..3 {
            s.spawn(move || (t..count).step_by(3).for_each(|i| task.call(i)));
        }
    });
}

thread_local! {
    /// One single-thread context per ISA and test thread (contexts are not shared between test
    /// threads, so no test changes another's ISA).
    static SINGLE: RefCell<HashMap<Isa, std::rc::Rc<Ctx>>> = RefCell::new(HashMap::new());
}

/// A 1-thread context per supported ISA, then the default context.
fn contexts() -> Vec<std::rc::Rc<Ctx>> {
    let mut list: Vec<std::rc::Rc<Ctx>> = Isa::supported()
        .into_iter()
        .map(|isa| {
            SINGLE.with(|m| {
                m.borrow_mut()
                    .entry(isa)
                    .or_insert_with(|| std::rc::Rc::new(Ctx::new(1, isa)))
                    .clone()
            })
        })
        .collect();
    list.push(std::rc::Rc::new(Ctx::default_context()));
    list
}

// ---------------------------------------------------------------------------------------------
// The calls.

/// The elementwise operations (channel dropout has its own calls below).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dropout,
    Alpha,
    Gaussian,
    Uniform,
}

const KINDS: [Kind; 4] = [Kind::Dropout, Kind::Alpha, Kind::Gaussian, Kind::Uniform];

impl Kind {
    /// Words of the stream per element.
    fn words(self) -> u64 {
        if self == Kind::Gaussian { 2 } else { 1 }
    }

    fn has_mask(self) -> bool {
        matches!(self, Kind::Dropout | Kind::Alpha)
    }
}

/// One call of an elementwise operation, forward (`src` = x, `dst` = y, `mask` out) or backward
/// (`src` = dy, `dst` = dx, `mask` in). `param` is p, or beta for uniform dropout.
///
/// # Safety
/// The pointers are what the C contract allows for this call (the function under test checks
/// everything else).
#[allow(clippy::too_many_arguments)]
unsafe fn raw(
    kind: Kind,
    backward: bool,
    ctx: *mut nk_context,
    n: usize,
    src: *const f32,
    dst: *mut f32,
    param: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: forwarded.
    unsafe {
        match (kind, backward) {
            (Kind::Dropout, false) => {
                nk_dropout_forward(ctx, n, src, dst, param, seed, offset, mask)
            }
            (Kind::Dropout, true) => {
                nk_dropout_backward(ctx, n, src, dst, param, seed, offset, mask.cast_const())
            }
            (Kind::Alpha, false) => {
                nk_alpha_dropout_forward(ctx, n, src, dst, param, seed, offset, mask)
            }
            (Kind::Alpha, true) => {
                nk_alpha_dropout_backward(ctx, n, src, dst, param, seed, offset, mask.cast_const())
            }
            (Kind::Gaussian, false) => {
                assert!(mask.is_null());
                nk_gaussian_dropout_forward(ctx, n, src, dst, param, seed, offset)
            }
            (Kind::Gaussian, true) => {
                assert!(mask.is_null());
                nk_gaussian_dropout_backward(ctx, n, src, dst, param, seed, offset)
            }
            (Kind::Uniform, false) => {
                assert!(mask.is_null());
                nk_uniform_dropout_forward(ctx, n, src, dst, param, seed, offset)
            }
            (Kind::Uniform, true) => {
                assert!(mask.is_null());
                nk_uniform_dropout_backward(ctx, n, src, dst, param, seed, offset)
            }
        }
    }
}

/// One call of channel dropout, forward or backward, as [`raw`].
///
/// # Safety
/// As [`raw`].
#[allow(clippy::too_many_arguments)]
unsafe fn raw_channel(
    backward: bool,
    ctx: *mut nk_context,
    shape: nk_shape,
    src: *const f32,
    dst: *mut f32,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: forwarded.
    unsafe {
        if backward {
            nk_channel_dropout_backward(ctx, shape, src, dst, p, seed, offset, mask.cast_const())
        } else {
            nk_channel_dropout_forward(ctx, shape, src, dst, p, seed, offset, mask)
        }
    }
}

fn philox(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut out = [0u32; 4];
    // SAFETY: arrays of the sizes the contract names.
    unsafe { nk_philox4x32_10(counter.as_ptr(), key.as_ptr(), out.as_mut_ptr()) };
    out
}

/// The mask argument of a call.
#[derive(Clone, Copy)]
enum Mask<'a> {
    /// NULL: not wanted (forward) or made again (backward).
    Null,
    /// A buffer the call writes (forward).
    Out,
    /// A mask the call reads (backward).
    In(&'a [u8]),
}

/// A pattern no call writes (a NaN with a payload), in every output element before a call.
const SENTINEL: u32 = 0x7fa5_5a5a;
/// Elements and bytes past the end of every output, which must stay untouched.
const GUARD: usize = 9;

/// Runs one call on buffers made for it: `dst` and a written mask start filled with sentinels
/// and have guard elements past their end; in place, `dst` is a copy of `src` passed as both.
/// Asserts the status is `NK_OK` and the guards are intact; returns `dst` and the mask written.
fn execute(
    src: &[f32],
    mask_bits: usize,
    in_place: bool,
    mask: Mask,
    call: impl FnOnce(*const f32, *mut f32, *mut u8) -> nk_status,
    what: &str,
) -> (Vec<f32>, Option<Vec<u8>>) {
    let n = src.len();
    let mut dst: Vec<f32> = if in_place {
        src.to_vec()
    } else {
        vec![f32::from_bits(SENTINEL); n]
    };
    dst.extend(std::iter::repeat_n(f32::from_bits(SENTINEL), GUARD));
    let mask_len = r::mask_bytes(mask_bits);
    let mut mask_buf = match mask {
        Mask::Null => Vec::new(),
        Mask::Out => vec![0xA5u8; mask_len + GUARD],
        Mask::In(m) => m.to_vec(),
    };
    let src_ptr = if in_place { dst.as_ptr() } else { src.as_ptr() };
    let mask_ptr = match mask {
        Mask::Null => null_mut(),
        _ => mask_buf.as_mut_ptr(),
    };
    let status = call(src_ptr, dst.as_mut_ptr(), mask_ptr);
    assert_eq!(status, NK_OK, "{what}: status ({})", last_error());
    assert!(
        dst[n..].iter().all(|v| v.to_bits() == SENTINEL),
        "{what}: wrote past the last element"
    );
    dst.truncate(n);
    let mask_out = match mask {
        Mask::Out => {
            assert!(
                mask_buf[mask_len..].iter().all(|&b| b == 0xA5),
                "{what}: wrote past the last mask byte"
            );
            mask_buf.truncate(mask_len);
            Some(mask_buf)
        }
        Mask::In(m) => {
            assert_eq!(mask_buf, m, "{what}: the input mask changed");
            None
        }
        Mask::Null => None,
    };
    (dst, mask_out)
}

/// An elementwise call on `ctx`; see [`execute`].
#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &Ctx,
    kind: Kind,
    backward: bool,
    in_place: bool,
    src: &[f32],
    param: f32,
    seed: u64,
    offset: u64,
    mask: Mask,
) -> (Vec<f32>, Option<Vec<u8>>) {
    let what = format!(
        "{kind:?} {} (n {}, param {param:e}, seed {seed:#x}, offset {offset}, {}{})",
        if backward { "backward" } else { "forward" },
        src.len(),
        ctx.name,
        if in_place { ", in place" } else { "" }
    );
    execute(
        src,
        src.len(),
        in_place,
        mask,
        // SAFETY: buffers of the call's sizes.
        |s, d, m| unsafe {
            raw(
                kind,
                backward,
                ctx.ptr,
                src.len(),
                s,
                d,
                param,
                seed,
                offset,
                m,
            )
        },
        &what,
    )
}

/// A channel-dropout call on `ctx`; see [`execute`].
#[allow(clippy::too_many_arguments)]
fn run_channel(
    ctx: &Ctx,
    shape: nk_shape,
    backward: bool,
    in_place: bool,
    src: &[f32],
    p: f32,
    seed: u64,
    offset: u64,
    mask: Mask,
) -> (Vec<f32>, Option<Vec<u8>>) {
    assert_eq!(src.len(), shape.batch * shape.channels * shape.spatial);
    let what = format!(
        "channel dropout {} ({}x{}x{} layout {}, p {p:e}, seed {seed:#x}, offset {offset}, {}{})",
        if backward { "backward" } else { "forward" },
        shape.batch,
        shape.channels,
        shape.spatial,
        shape.layout,
        ctx.name,
        if in_place { ", in place" } else { "" }
    );
    execute(
        src,
        shape.batch * shape.channels,
        in_place,
        mask,
        // SAFETY: buffers of the call's sizes.
        |s, d, m| unsafe { raw_channel(backward, ctx.ptr, shape, s, d, p, seed, offset, m) },
        &what,
    )
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated (the contract).
    unsafe { CStr::from_ptr(nk_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn shape(batch: usize, channels: usize, spatial: usize, channels_last: bool) -> nk_shape {
    nk_shape {
        batch,
        channels,
        spatial,
        layout: if channels_last { 1 } else { 0 },
    }
}

// ---------------------------------------------------------------------------------------------
// Comparisons.

/// The same float: equal bits, or both NaN (a NaN's payload is not part of the contract).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[track_caller]
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| !same(got[i], want[i])) {
        panic!(
            "{what}: element {i} of {} is {:e} ({:#010x}), want {:e} ({:#010x})",
            got.len(),
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for i in 0..got.len() {
        let (g, w, t) = (f64::from(got[i]), want[i], tol(i));
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= t
        };
        assert!(
            ok,
            "{what}: element {i} of {} is {g:e}, want {w:e} within {t:e} (off by {:e})",
            got.len(),
            (g - w).abs()
        );
    }
}

#[track_caller]
fn assert_mask(got: &[u8], want: &[bool], what: &str) {
    let packed = r::pack(want);
    if got != packed.as_slice() {
        let first = (0..want.len())
            .find(|&i| (got[i / 8] >> (i % 8) & 1 == 1) != want[i])
            .map(|i| format!("first differing element {i}: got {}", !want[i]))
            .unwrap_or_else(|| "only the padding bits differ".into());
        panic!(
            "{what}: mask of {} bits differs from the reference ({first}); got {:02x?}, want \
             {:02x?}",
            want.len(),
            &got[..got.len().min(16)],
            &packed[..packed.len().min(16)]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The reference applied to a call.

/// The decisions of a masked operation, or `None` for the noise operations.
fn decisions(kind: Kind, n: usize, p: f32, seed: u64, offset: u64) -> Option<Vec<bool>> {
    kind.has_mask()
        .then(|| r::keep_decisions(n, p, seed, offset))
}

/// Tolerance of an alpha-dropout output against its f64 value: a float product and a float sum
/// (or one fused multiply-add) of float coefficients.
fn alpha_tolerance(p: f32, x: f32, keep: bool) -> f64 {
    let (a, b) = r::alpha_coefficients(p);
    let v = if keep { f64::from(x) } else { r::ALPHA_PRIME };
    2.0 * f64::from(f32::EPSILON) * ((f64::from(a) * v).abs() + f64::from(b).abs())
        + f64::from(f32::MIN_POSITIVE)
}

/// Checks a forward output (and its mask, if any) against the reference.
#[allow(clippy::too_many_arguments)]
fn check_forward(
    kind: Kind,
    x: &[f32],
    param: f32,
    seed: u64,
    offset: u64,
    y: &[f32],
    mask: Option<&[u8]>,
    what: &str,
) {
    let n = x.len();
    let keep = decisions(kind, n, param, seed, offset);
    if let (Some(mask), Some(keep)) = (mask, &keep) {
        assert_mask(mask, keep, &format!("{what}: mask"));
    }
    match kind {
        Kind::Dropout => {
            let keep = keep.unwrap();
            assert_same(y, &r::dropout_apply(x, &keep, param), what);
        }
        Kind::Alpha => {
            let keep = keep.unwrap();
            let want = r::alpha_forward_apply(x, &keep, param);
            if param == 1.0 {
                assert_same(y, &vec![0.0; n], &format!("{what} (p = 1)"));
                return;
            }
            assert_close(y, &want, |i| alpha_tolerance(param, x[i], keep[i]), what);
            // Every dropped element takes the same value, whatever its input.
            let dropped: Vec<f32> = (0..n).filter(|&i| !keep[i]).map(|i| y[i]).collect();
            if let Some(first) = dropped.first() {
                assert_same(
                    &dropped,
                    &vec![*first; dropped.len()],
                    &format!("{what}: dropped values"),
                );
            }
        }
        Kind::Gaussian => {
            let factors = r::gaussian_factors(n, param, seed, offset);
            let want: Vec<f64> = (0..n).map(|i| f64::from(x[i]) * factors[i].0).collect();
            assert_close(
                y,
                &want,
                |i| {
                    let (e, radius) = factors[i];
                    f64::from(x[i]).abs()
                        * (r::gaussian_factor_tolerance(param, radius)
                            + 4.0 * f64::from(f32::EPSILON) * e.abs())
                },
                what,
            );
        }
        Kind::Uniform => {
            let factors = r::uniform_factors(n, param, seed, offset);
            let want: Vec<f64> = (0..n).map(|i| f64::from(x[i]) * factors[i]).collect();
            assert_close(y, &want, |i| r::uniform_tolerance(x[i], param), what);
        }
    }
}

/// Checks a backward output: `keep` are the decisions it must apply (the mask passed, or the
/// generated ones); `forward_of_dy` is the forward of the same call applied to `dy` on the same
/// context, whose factors the noise operations must reuse bit for bit.
#[allow(clippy::too_many_arguments)]
fn check_backward(
    kind: Kind,
    dy: &[f32],
    param: f32,
    seed: u64,
    offset: u64,
    keep: Option<&[bool]>,
    forward_of_dy: Option<&[f32]>,
    dx: &[f32],
    what: &str,
) {
    match kind {
        Kind::Dropout => assert_same(dx, &r::dropout_apply(dy, keep.unwrap(), param), what),
        Kind::Alpha => assert_same(dx, &r::alpha_backward_apply(dy, keep.unwrap(), param), what),
        Kind::Gaussian | Kind::Uniform => {
            // dx = dy * e with the forward's e: the forward applied to dy, and the reference.
            check_forward(kind, dy, param, seed, offset, dx, None, what);
            if let Some(f) = forward_of_dy {
                assert_same(dx, f, &format!("{what}: backward vs forward applied to dy"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test data.

/// `n` values: normal values of varied scales, with (if `specials`) NaN, infinities, signed
/// zeros, subnormals and huge values among them.
fn data(seed: u64, n: usize, specials: bool) -> Vec<f32> {
    let mut g = Gen::new(seed);
    let scale = [1.0, 1e-3, 1e3, 1e-30][g.below(4)];
    (0..n)
        .map(|_| {
            if specials && g.below(10) == 0 {
                [
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    0.0,
                    -0.0,
                    1e-40,
                    -3e38,
                    f32::MAX,
                ][g.below(8)]
            } else {
                (g.normal() * scale) as f32
            }
        })
        .collect()
}

/// Largest offset a call of `n` elements may take with `words` words per element (the last word
/// index `offset + n - 1` or `2 (offset + n) - 1` must fit in 64 bits).
fn max_offset(n: usize, words: u64) -> u64 {
    let n = n as u64;
    if n == 0 {
        return u64::MAX;
    }
    match words {
        1 => u64::MAX - (n - 1),
        _ => (1u64 << 63) - n,
    }
}

/// An offset of one of several families: small (within a block of four words or a mask byte),
/// anywhere, just below the end of the word index, or where the block number crosses 2^32 (its
/// high counter word becomes 1).
fn offset_of(family: u8, raw: u64, n: usize, words: u64) -> u64 {
    let limit = max_offset(n, words);
    match family % 4 {
        0 => (raw % 70).min(limit),
        1 => {
            if limit == u64::MAX {
                raw
            } else {
                raw % (limit + 1)
            }
        }
        2 => limit.saturating_sub(raw % 37),
        _ => ((1u64 << 34) / words).saturating_sub(raw % 37).min(limit),
    }
}

/// Drop probabilities: the ends, -0.0, exact multiples of 2^-24 and the float just above one
/// (where the threshold `ceil(p 2^24)` steps), anything in [0, 1], tiny and nearly 1.
fn probability() -> impl Strategy<Value = f32> {
    prop_oneof![
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => Just(1.0f32),
        1 => Just(0.5f32),
        4 => 0.0f32..=1.0,
        3 => (0u32..=1 << 24, any::<bool>()).prop_map(|(k, up)| {
            let p = k as f32 / 16_777_216.0;
            if up && k < 1 << 24 { f32::from_bits(p.to_bits() + 1) } else { p }
        }),
        1 => (1u32..2000).prop_map(|k| k as f32 * 1e-7),
        1 => (1u32..2000).prop_map(|k| 1.0 - k as f32 * 6e-8),
    ]
}

/// Beta of uniform dropout: 0, -0.0, small, around 1 and above.
fn beta() -> impl Strategy<Value = f32> {
    prop_oneof![
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        4 => 0.0f32..1.0,
        1 => Just(1.0f32),
        2 => 1.0f32..4.0,
    ]
}

/// The parameter of `kind`: p (below 1 for Gaussian dropout, whose variance diverges at 1), or
/// beta.
fn param_of(kind: Kind, p: f32, beta: f32) -> f32 {
    match kind {
        Kind::Uniform => beta,
        Kind::Gaussian => p.min(0.999),
        _ => p,
    }
}

// ---------------------------------------------------------------------------------------------
// The generator.

#[test]
fn philox_gives_the_published_known_answers() {
    for (counter, key, want) in r::PHILOX4X32_10_KAT {
        assert_eq!(r::philox4x32_10(counter, key), want, "the reference itself");
        assert_eq!(
            philox(counter, key),
            want,
            "nk_philox4x32_10({counter:08x?}, {key:08x?})"
        );
    }
}

#[test]
fn philox_matches_the_reference_on_many_blocks() {
    let mut g = Gen::new(11);
    for _ in 0..20_000 {
        let v = g.next_u64();
        let w = g.next_u64();
        let k = g.next_u64();
        let counter = [v as u32, (v >> 32) as u32, w as u32, (w >> 32) as u32];
        let key = [k as u32, (k >> 32) as u32];
        assert_eq!(
            philox(counter, key),
            r::philox4x32_10(counter, key),
            "counter {counter:08x?}, key {key:08x?}"
        );
    }
}

#[test]
fn word_stream_reads_the_documented_words() {
    // Element i of a mask of p = 0.5 is kept iff bit 31 of word offset + i is set: the mask spells
    // out the top bits of the words, which are checked here against nk_philox4x32_10 itself
    // (not only against the reference).
    let ctx = Ctx::default_context();
    for (seed, offset) in [
        (0u64, 0u64),
        (0x0123_4567_89ab_cdef, 5),
        (u64::MAX, (1 << 34) - 3),
        (42, u64::MAX - 63),
    ] {
        let n = 64;
        let mut mask = vec![0u8; 8];
        // SAFETY: a buffer of 64 bits.
        let status = unsafe { nk_dropout_mask(ctx.ptr, n, 0.5, seed, offset, mask.as_mut_ptr()) };
        assert_eq!(status, NK_OK);
        for i in 0..n as u64 {
            let w = offset + i;
            let block = w >> 2;
            let out = philox(
                [block as u32, (block >> 32) as u32, 0, 0],
                [seed as u32, (seed >> 32) as u32],
            );
            let r = out[(w & 3) as usize];
            assert_eq!(r, r::word(seed, w), "word {w} of seed {seed:#x}");
            let kept = mask[(i / 8) as usize] >> (i % 8) & 1 == 1;
            assert_eq!(
                kept,
                r >> 31 == 1,
                "element {i}, seed {seed:#x}, offset {offset}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Masks and outputs against the reference.

proptest! {
    #![proptest_config(config(1000))]

    /// nk_dropout_mask, and the masks written by dropout and alpha dropout, equal the reference
    /// bit for bit, padding bits included, on every ISA and the default context.
    #[test]
    fn masks_match_reference(
        n in prop_oneof![0usize..40, 0usize..1200],
        p in probability(),
        seed in any::<u64>(),
        family in any::<u8>(),
        raw_offset in any::<u64>(),
    ) {
        let offset = offset_of(family, raw_offset, n, 1);
        let keep = r::keep_decisions(n, p, seed, offset);
        let x = data(seed ^ 1, n, true);
        for ctx in contexts() {
            let what = format!("n {n}, p {p:e}, seed {seed:#x}, offset {offset}, {}", ctx.name);
            let (_, mask) = execute(
                &[],
                n,
                false,
                Mask::Out,
                // SAFETY: a mask buffer of n bits.
                |_, _, m| unsafe { nk_dropout_mask(ctx.ptr, n, p, seed, offset, m) },
                &format!("nk_dropout_mask ({what})"),
            );
            assert_mask(&mask.unwrap(), &keep, &format!("nk_dropout_mask ({what})"));
            for kind in [Kind::Dropout, Kind::Alpha] {
                let (_, mask) = run(&ctx, kind, false, false, &x, p, seed, offset, Mask::Out);
                assert_mask(&mask.unwrap(), &keep, &format!("{kind:?} forward mask ({what})"));
            }
        }
    }

    /// Every elementwise operation against the reference: forward with and without a mask,
    /// backward with the forward's mask and with the mask made again, and in place against out
    /// of place, on every ISA and the default context.
    #[test]
    fn operations_match_reference(
        k in 0usize..4,
        n in prop_oneof![0usize..40, 0usize..700],
        p in probability(),
        b in beta(),
        seed in any::<u64>(),
        family in any::<u8>(),
        raw_offset in any::<u64>(),
        data_seed in any::<u64>(),
    ) {
        let kind = KINDS[k];
        let param = param_of(kind, p, b);
        let offset = offset_of(family, raw_offset, n, kind.words());
        // Exact variants take any values; the others finite ones (their tolerances are
        // relative), NaN and infinities being tested on their own below.
        let specials = kind == Kind::Dropout;
        let x = data(data_seed, n, specials);
        let dy = data(data_seed ^ 0x5555, n, specials);
        let keep = decisions(kind, n, param, seed, offset);
        for ctx in contexts() {
            let what = ctx.name.clone();
            let mask_arg = if kind.has_mask() { Mask::Out } else { Mask::Null };
            let (y, mask) = run(&ctx, kind, false, false, &x, param, seed, offset, mask_arg);
            check_forward(kind, &x, param, seed, offset, &y, mask.as_deref(), &format!("{kind:?} forward, {what}"));
            let (y_nomask, _) = run(&ctx, kind, false, false, &x, param, seed, offset, Mask::Null);
            assert_same(&y_nomask, &y, &format!("{kind:?} forward without mask, {what}"));
            let (y_in_place, mask_in_place) =
                run(&ctx, kind, false, true, &x, param, seed, offset, mask_arg);
            assert_same(&y_in_place, &y, &format!("{kind:?} forward in place, {what}"));
            assert_eq!(mask_in_place, mask, "{kind:?} forward in place: mask, {what}");

            let (forward_of_dy, _) = run(&ctx, kind, false, false, &dy, param, seed, offset, Mask::Null);
            let (dx, _) = run(&ctx, kind, true, false, &dy, param, seed, offset, Mask::Null);
            check_backward(kind, &dy, param, seed, offset, keep.as_deref(), Some(&forward_of_dy), &dx,
                &format!("{kind:?} backward (mask made again), {what}"));
            let (dx_in_place, _) = run(&ctx, kind, true, true, &dy, param, seed, offset, Mask::Null);
            assert_same(&dx_in_place, &dx, &format!("{kind:?} backward in place, {what}"));
            if let Some(mask) = &mask {
                let (dx_mask, _) = run(&ctx, kind, true, false, &dy, param, seed, offset, Mask::In(mask));
                assert_same(&dx_mask, &dx, &format!("{kind:?} backward with the mask, {what}"));
                let (dx_mask_in_place, _) =
                    run(&ctx, kind, true, true, &dy, param, seed, offset, Mask::In(mask));
                assert_same(&dx_mask_in_place, &dx, &format!("{kind:?} backward with the mask, in place, {what}"));
            }
        }
    }

    /// A backward given a mask applies that mask, whatever (seed, offset) say, and ignores the
    /// padding bits of its last byte (p < 1).
    #[test]
    fn backward_applies_the_mask_it_is_given(
        masked in any::<bool>(),
        n in 0usize..300,
        p in probability(),
        seed in any::<u64>(),
        mask_seed in any::<u64>(),
    ) {
        let kind = if masked { Kind::Dropout } else { Kind::Alpha };
        // At p = 1 the forward keeps nothing, so a mask with kept elements cannot come from it;
        // what backward makes of one is not specified.
        let p = if p == 1.0 { 0.5 } else { p };
        let mut g = Gen::new(mask_seed);
        let mask: Vec<u8> = (0..r::mask_bytes(n)).map(|_| g.next_u64() as u8).collect();
        let keep = r::unpack(&mask, n);
        let dy = data(mask_seed ^ 3, n, kind == Kind::Dropout);
        for ctx in contexts() {
            let (dx, _) = run(&ctx, kind, true, false, &dy, p, seed, 7, Mask::In(&mask));
            check_backward(kind, &dy, p, seed, 7, Some(&keep), None, &dx,
                &format!("{kind:?} backward with an arbitrary mask, {}", ctx.name));
            // Setting the padding bits changes nothing.
            if n % 8 != 0 {
                let mut padded = mask.clone();
                *padded.last_mut().unwrap() |= 0xffu8 << (n % 8);
                let (dx_padded, _) = run(&ctx, kind, true, false, &dy, p, seed, 7, Mask::In(&padded));
                assert_same(&dx_padded, &dx, &format!("{kind:?} backward, padding bits set, {}", ctx.name));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Splitting: pieces at element offsets give what one call gives.

/// Sorted cut points in `0..=n`, from arbitrary raw values.
fn cuts_of(raw: &[usize], n: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|&c| c % (n + 1)).collect();
    cuts.push(0);
    cuts.push(n);
    cuts.sort_unstable();
    cuts
}

proptest! {
    #![proptest_config(config(500))]

    /// Every elementwise operation, forward (output and mask) and backward (with the pieces of
    /// the mask and with the mask made again), cut at arbitrary element offsets into calls
    /// whose offsets are `offset + start`, gives bitwise what one call gives.
    #[test]
    fn split_calls_match_one_call(
        k in 0usize..4,
        n in 0usize..1500,
        raw_cuts in prop::collection::vec(any::<usize>(), 0..5),
        p in probability(),
        b in beta(),
        seed in any::<u64>(),
        family in any::<u8>(),
        raw_offset in any::<u64>(),
    ) {
        let kind = KINDS[k];
        let param = param_of(kind, p, b);
        let offset = offset_of(family, raw_offset, n, kind.words());
        let cuts = cuts_of(&raw_cuts, n);
        let x = data(seed ^ 9, n, kind == Kind::Dropout);
        let dy = data(seed ^ 10, n, kind == Kind::Dropout);
        let mask_arg = if kind.has_mask() { Mask::Out } else { Mask::Null };
        for ctx in contexts() {
            let what = format!("{kind:?}, cuts {cuts:?}, offset {offset}, {}", ctx.name);
            let (y, mask) = run(&ctx, kind, false, false, &x, param, seed, offset, mask_arg);
            let (dx, _) = run(&ctx, kind, true, false, &dy, param, seed, offset, Mask::Null);
            let mut y_parts = Vec::new();
            let mut keep_parts = Vec::new();
            let mut dx_parts = Vec::new();
            let mut dx_mask_parts = Vec::new();
            for piece in cuts.windows(2) {
                let (start, end) = (piece[0], piece[1]);
                let at = offset + start as u64;
                let (yp, mp) = run(&ctx, kind, false, false, &x[start..end], param, seed, at, mask_arg);
                y_parts.extend(yp);
                let (dxp, _) = run(&ctx, kind, true, false, &dy[start..end], param, seed, at, Mask::Null);
                dx_parts.extend(dxp);
                if let Some(mp) = mp {
                    // The padding bits of every piece's mask are zero.
                    assert_eq!(mp, r::pack(&r::unpack(&mp, end - start)), "{what}: piece mask padding");
                    let (dxm, _) = run(&ctx, kind, true, false, &dy[start..end], param, seed, at, Mask::In(&mp));
                    dx_mask_parts.extend(dxm);
                    keep_parts.extend(r::unpack(&mp, end - start));
                }
            }
            assert_same(&y_parts, &y, &format!("{what}: forward"));
            assert_same(&dx_parts, &dx, &format!("{what}: backward"));
            if let Some(mask) = mask {
                assert_mask(&mask, &keep_parts, &format!("{what}: mask"));
                assert_same(&dx_mask_parts, &dx, &format!("{what}: backward with the pieces' masks"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Channel dropout.

proptest! {
    #![proptest_config(config(600))]

    /// Channel dropout in both layouts against the reference: one decision per (n, c) from
    /// word `offset + n*C + c`, applied to the whole spatial map; backward with the mask and
    /// made again; in place; and the batch split into two calls.
    #[test]
    fn channel_dropout_matches_reference(
        batch in 0usize..6,
        channels in 0usize..11,
        spatial in 0usize..40,
        channels_last in any::<bool>(),
        p in probability(),
        seed in any::<u64>(),
        family in any::<u8>(),
        raw_offset in any::<u64>(),
        split in any::<usize>(),
    ) {
        let sh = shape(batch, channels, spatial, channels_last);
        let pairs = batch * channels;
        let offset = offset_of(family, raw_offset, pairs, 1);
        let n = pairs * spatial;
        let x = data(seed ^ 21, n, true);
        let dy = data(seed ^ 22, n, true);
        let keep = r::channel_keep_decisions(batch, channels, p, seed, offset);
        let want_y = r::channel_apply(&x, batch, channels, spatial, channels_last, &keep, p);
        let want_dx = r::channel_apply(&dy, batch, channels, spatial, channels_last, &keep, p);
        for ctx in contexts() {
            let what = format!("{batch}x{channels}x{spatial}, last {channels_last}, p {p:e}, offset {offset}, {}", ctx.name);
            let (y, mask) = run_channel(&ctx, sh, false, false, &x, p, seed, offset, Mask::Out);
            let mask = mask.unwrap();
            assert_same(&y, &want_y, &format!("forward, {what}"));
            if n > 0 {
                assert_mask(&mask, &keep, &format!("mask, {what}"));
            } else {
                // No data: nothing is written, the mask included.
                assert!(mask.iter().all(|&b| b == 0xA5), "mask written without data, {what}");
            }
            let (y2, _) = run_channel(&ctx, sh, false, true, &x, p, seed, offset, Mask::Null);
            assert_same(&y2, &want_y, &format!("forward in place without mask, {what}"));
            let (dx, _) = run_channel(&ctx, sh, true, false, &dy, p, seed, offset, Mask::Null);
            assert_same(&dx, &want_dx, &format!("backward made again, {what}"));
            let (dx2, _) = run_channel(&ctx, sh, true, true, &dy, p, seed, offset, Mask::In(&mask));
            if n > 0 {
                assert_same(&dx2, &want_dx, &format!("backward with the mask, in place, {what}"));
            }

            // The batch cut in two: the second call starts at pair offset + b1 * C.
            let b1 = split % (batch + 1);
            let cut = b1 * channels * spatial;
            let first = shape(b1, channels, spatial, channels_last);
            let second = shape(batch - b1, channels, spatial, channels_last);
            let (mut ys, m1) = run_channel(&ctx, first, false, false, &x[..cut], p, seed, offset, Mask::Out);
            let at = offset + (b1 * channels) as u64;
            let (y_rest, m2) = run_channel(&ctx, second, false, false, &x[cut..], p, seed, at, Mask::Out);
            ys.extend(y_rest);
            assert_same(&ys, &want_y, &format!("forward split at batch {b1}, {what}"));
            if spatial > 0 {
                let mut bits = r::unpack(&m1.unwrap(), b1 * channels);
                bits.extend(r::unpack(&m2.unwrap(), (batch - b1) * channels));
                assert_eq!(bits, keep, "mask split at batch {b1}, {what}");
            }
            let (mut dxs, _) = run_channel(&ctx, first, true, false, &dy[..cut], p, seed, offset, Mask::Null);
            let (dx_rest, _) = run_channel(&ctx, second, true, false, &dy[cut..], p, seed, at, Mask::Null);
            dxs.extend(dx_rest);
            assert_same(&dxs, &want_dx, &format!("backward split at batch {b1}, {what}"));
        }
    }
}

#[test]
fn channel_dropout_with_one_image_splits_along_channels() {
    // With batch 1 in channels-first layout, a cut between channels is a cut of the tensor.
    let (channels, spatial) = (37, 19);
    let x = data(5, channels * spatial, true);
    let ctx = Ctx::default_context();
    let (p, seed, offset) = (0.4, 77, 1003);
    let (y, mask) = run_channel(
        &ctx,
        shape(1, channels, spatial, false),
        false,
        false,
        &x,
        p,
        seed,
        offset,
        Mask::Out,
    );
    let mut ys = Vec::new();
    let mut bits = Vec::new();
    for (c0, c1) in [(0, 5), (5, 6), (6, 30), (30, 37)] {
        let (yp, mp) = run_channel(
            &ctx,
            shape(1, c1 - c0, spatial, false),
            false,
            false,
            &x[c0 * spatial..c1 * spatial],
            p,
            seed,
            offset + c0 as u64,
            Mask::Out,
        );
        ys.extend(yp);
        bits.extend(r::unpack(&mp.unwrap(), c1 - c0));
    }
    assert_same(&ys, &y, "channel pieces");
    assert_mask(&mask.unwrap(), &bits, "channel pieces: mask");
}

// ---------------------------------------------------------------------------------------------
// ISAs and thread counts.

/// The results of one call on one context.
struct Outcome {
    name: String,
    y: Vec<f32>,
    mask: Option<Vec<u8>>,
    dx: Vec<f32>,
}

/// Every ISA of this CPU with 1, 2 and 3 threads and two executors (tasks last first, and on 3
/// threads of the host), and the default context, on tensors large enough to be split over
/// threads, at an offset that is not a multiple of 4 or 8: the same bits
/// for every variant and its mask; Gaussian dropout the same bits across thread counts and
/// within float rounding across ISAs. Each result also matches the reference.
#[test]
fn isa_and_thread_count_do_not_change_results() {
    let n = 300_007;
    let (seed, offset) = (0xDEAD_BEEF_0123_4567u64, 1_000_003u64);
    let x = data(1, n, false);
    let xs = data(2, n, true);
    let mut configs: Vec<Ctx> = Vec::new();
    for isa in Isa::supported() {
        for threads in [1, 2, 3] {
            configs.push(Ctx::new(threads, isa));
        }
        configs.push(Ctx::executor(false, isa));
        configs.push(Ctx::executor(true, isa));
    }
    configs.push(Ctx::default_context());
    for kind in KINDS {
        let param = if kind == Kind::Uniform { 0.7 } else { 0.3 };
        let input = if kind == Kind::Dropout { &xs } else { &x };
        let mask_arg = if kind.has_mask() {
            Mask::Out
        } else {
            Mask::Null
        };
        let mut first: Option<Outcome> = None;
        let mut per_isa: HashMap<String, Outcome> = HashMap::new();
        for ctx in &configs {
            let (y, mask) = run(
                ctx, kind, false, false, input, param, seed, offset, mask_arg,
            );
            let (dx, _) = run(
                ctx,
                kind,
                true,
                false,
                input,
                param,
                seed,
                offset,
                Mask::Null,
            );
            let (y_in_place, _) = run(
                ctx,
                kind,
                false,
                true,
                input,
                param,
                seed,
                offset,
                Mask::Null,
            );
            assert_same(&y_in_place, &y, &format!("{kind:?} in place, {}", ctx.name));
            if let Some(m) = &mask {
                let (dx_mask, _) = run(
                    ctx,
                    kind,
                    true,
                    false,
                    input,
                    param,
                    seed,
                    offset,
                    Mask::In(m),
                );
                assert_same(
                    &dx_mask,
                    &dx,
                    &format!("{kind:?} backward with the mask, {}", ctx.name),
                );
            }
            let isa_name = ctx.name.split(',').next().unwrap().to_string();
            match &first {
                None => {
                    let what = format!("{kind:?}, {}", ctx.name);
                    check_forward(kind, input, param, seed, offset, &y, mask.as_deref(), &what);
                    let keep = decisions(kind, n, param, seed, offset);
                    check_backward(
                        kind,
                        input,
                        param,
                        seed,
                        offset,
                        keep.as_deref(),
                        Some(&y),
                        &dx,
                        &what,
                    );
                    first = Some(Outcome {
                        name: ctx.name.clone(),
                        y: y.clone(),
                        mask: mask.clone(),
                        dx: dx.clone(),
                    });
                }
                Some(o) => {
                    let what = format!("{kind:?}: {} vs {}", ctx.name, o.name);
                    assert_eq!(mask, o.mask, "{what}: mask");
                    if kind == Kind::Gaussian {
                        check_forward(kind, input, param, seed, offset, &y, None, &what);
                        check_backward(
                            kind,
                            input,
                            param,
                            seed,
                            offset,
                            None,
                            Some(&y),
                            &dx,
                            &what,
                        );
                    } else {
                        assert_same(&y, &o.y, &format!("{what}: forward"));
                        assert_same(&dx, &o.dx, &format!("{what}: backward"));
                    }
                }
            }
            if ctx.ptr.is_null() {
                continue;
            }
            // Within one ISA, every thread count gives the same bits (Gaussian dropout too).
            if let Some(o) = per_isa.get(&isa_name) {
                let what = format!("{kind:?}: {} vs {}", ctx.name, o.name);
                assert_same(&y, &o.y, &format!("{what}: forward"));
                assert_same(&dx, &o.dx, &format!("{what}: backward"));
            } else {
                per_isa.insert(
                    isa_name,
                    Outcome {
                        name: ctx.name.clone(),
                        y,
                        mask,
                        dx,
                    },
                );
            }
        }
    }

    // Channel dropout, both layouts.
    for channels_last in [false, true] {
        let sh = shape(13, 29, 797, channels_last);
        let xc = data(3, 13 * 29 * 797, true);
        let keep = r::channel_keep_decisions(13, 29, 0.35, seed, offset);
        let want = r::channel_apply(&xc, 13, 29, 797, channels_last, &keep, 0.35);
        for ctx in &configs {
            let what = format!("channel dropout, last {channels_last}, {}", ctx.name);
            let (y, mask) = run_channel(ctx, sh, false, false, &xc, 0.35, seed, offset, Mask::Out);
            assert_same(&y, &want, &what);
            assert_mask(&mask.unwrap(), &keep, &what);
            let (dx, _) = run_channel(ctx, sh, true, false, &xc, 0.35, seed, offset, Mask::Null);
            assert_same(&dx, &want, &format!("{what}: backward"));
        }
    }

    // The mask alone.
    let want = r::dropout_mask(n, 0.6, seed, offset);
    for ctx in &configs {
        let (_, mask) = execute(
            &[],
            n,
            false,
            Mask::Out,
            // SAFETY: a mask buffer of n bits.
            |_, _, m| unsafe { nk_dropout_mask(ctx.ptr, n, 0.6, seed, offset, m) },
            "nk_dropout_mask",
        );
        assert_eq!(mask.unwrap(), want, "nk_dropout_mask, {}", ctx.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// Mean, variance and a 5-sigma bound on each, from the sample's own moments.
fn moments(v: &[f64]) -> (f64, f64, f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let m4 = v.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n;
    let mean_bound = 5.0 * (var / n).sqrt();
    let var_bound = 5.0 * ((m4 - var * var).max(0.0) / n).sqrt();
    (mean, var, mean_bound, var_bound)
}

const STAT_N: usize = 1 << 20;

#[test]
fn kept_fraction_is_binomial() {
    let ctx = Ctx::default_context();
    for (i, p) in [0.1f32, 0.5, 0.9, 1.0 / 3.0, 0.999, 1e-4]
        .into_iter()
        .enumerate()
    {
        let seed = 1000 + i as u64;
        let offset = 17 * i as u64;
        let (_, mask) = execute(
            &[],
            STAT_N,
            false,
            Mask::Out,
            // SAFETY: a mask buffer of STAT_N bits.
            |_, _, m| unsafe { nk_dropout_mask(ctx.ptr, STAT_N, p, seed, offset, m) },
            "nk_dropout_mask",
        );
        let kept: u64 = mask
            .unwrap()
            .iter()
            .map(|b| u64::from(b.count_ones()))
            .sum();
        let q = r::keep_probability(p);
        let n = STAT_N as f64;
        let sigma = (n * q * (1.0 - q)).sqrt();
        assert!(
            (kept as f64 - n * q).abs() <= 5.0 * sigma,
            "p {p}: kept {kept} of {STAT_N}, expected {} +- 5 * {sigma}",
            n * q
        );
        // The keep probability itself is 1 - p to within 2^-24.
        assert!((q - (1.0 - f64::from(p))).abs() <= 1.0 / 16_777_216.0);
    }
    // Channel dropout: over (n, c) pairs.
    let (batch, channels) = (512, 256);
    let x = vec![1.0f32; batch * channels * 2];
    let (_, mask) = run_channel(
        &ctx,
        shape(batch, channels, 2, true),
        false,
        false,
        &x,
        0.25,
        9,
        3,
        Mask::Out,
    );
    let kept: u64 = mask
        .unwrap()
        .iter()
        .map(|b| u64::from(b.count_ones()))
        .sum();
    let n = (batch * channels) as f64;
    let q = r::keep_probability(0.25);
    assert!((kept as f64 - n * q).abs() <= 5.0 * (n * q * (1.0 - q)).sqrt());
}

#[test]
fn gaussian_noise_has_mean_one_and_variance_p_over_one_minus_p() {
    let ctx = Ctx::default_context();
    let ones = vec![1.0f32; STAT_N];
    for (i, p) in [0.1f32, 0.5, 0.8].into_iter().enumerate() {
        let (e, _) = run(
            &ctx,
            Kind::Gaussian,
            false,
            false,
            &ones,
            p,
            31 + i as u64,
            5,
            Mask::Null,
        );
        let e: Vec<f64> = e.into_iter().map(f64::from).collect();
        let (mean, var, mean_bound, var_bound) = moments(&e);
        let want_var = f64::from(p) / (1.0 - f64::from(p));
        assert!(
            (mean - 1.0).abs() <= mean_bound,
            "p {p}: mean {mean}, want 1 +- {mean_bound}"
        );
        assert!(
            (var - want_var).abs() <= var_bound,
            "p {p}: variance {var}, want {want_var} +- {var_bound}"
        );
        // Symmetric around 1, as a normal distribution: the fraction above 1 is 1/2.
        let above = e.iter().filter(|&&v| v > 1.0).count() as f64;
        let n = STAT_N as f64;
        assert!(
            (above - n / 2.0).abs() <= 5.0 * (n / 4.0).sqrt(),
            "p {p}: {above} above 1"
        );
    }
    // p = 0 is the identity.
    let x = data(4, 1000, true);
    let (y, _) = run(
        &ctx,
        Kind::Gaussian,
        false,
        false,
        &x,
        0.0,
        1,
        2,
        Mask::Null,
    );
    assert_same(&y, &x, "Gaussian dropout with p = 0");
    let (y, _) = run(
        &ctx,
        Kind::Gaussian,
        false,
        false,
        &x,
        -0.0,
        1,
        2,
        Mask::Null,
    );
    assert_same(&y, &x, "Gaussian dropout with p = -0.0");
}

#[test]
fn uniform_noise_stays_within_beta_with_the_expected_moments() {
    let ctx = Ctx::default_context();
    let ones = vec![1.0f32; STAT_N];
    for (i, beta) in [0.1f32, 0.5, 1.0, 2.5].into_iter().enumerate() {
        let (e, _) = run(
            &ctx,
            Kind::Uniform,
            false,
            false,
            &ones,
            beta,
            77 + i as u64,
            9,
            Mask::Null,
        );
        let (lo, hi) = (
            (1.0 - f64::from(beta)) as f32,
            (1.0 + f64::from(beta)) as f32,
        );
        if let Some(v) = e.iter().find(|&&v| !(lo..=hi).contains(&v)) {
            panic!("beta {beta}: factor {v} outside [{lo}, {hi}]");
        }
        let e: Vec<f64> = e.into_iter().map(f64::from).collect();
        let (mean, var, mean_bound, var_bound) = moments(&e);
        // u takes the values k 2^-24, k < 2^24: E[2u - 1] = -2^-24, Var[u] = (1 - 2^-48) / 12.
        let m = 16_777_216.0f64;
        let want_mean = 1.0 - f64::from(beta) / m;
        let want_var = f64::from(beta).powi(2) * 4.0 * (1.0 - 1.0 / (m * m)) / 12.0;
        assert!(
            (mean - want_mean).abs() <= mean_bound,
            "beta {beta}: mean {mean}, want {want_mean} +- {mean_bound}"
        );
        assert!(
            (var - want_var).abs() <= var_bound,
            "beta {beta}: variance {var}, want {want_var} +- {var_bound}"
        );
    }
    // beta = 0 (and -0.0) is the identity.
    let x = data(5, 1000, true);
    for beta in [0.0, -0.0] {
        let (y, _) = run(
            &ctx,
            Kind::Uniform,
            false,
            false,
            &x,
            beta,
            1,
            2,
            Mask::Null,
        );
        assert_same(&y, &x, &format!("uniform dropout with beta = {beta}"));
    }
}

#[test]
fn alpha_dropout_keeps_mean_zero_and_variance_one() {
    let ctx = Ctx::default_context();
    let x = data(6, STAT_N, false);
    // Rescale the input to exactly mean 0 and variance 1 (in f64), so only the dropout's own
    // error is measured.
    let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let (m0, v0, _, _) = moments(&xf);
    let x: Vec<f32> = xf.iter().map(|v| ((v - m0) / v0.sqrt()) as f32).collect();
    for (i, p) in [0.05f32, 0.1, 0.3, 0.5].into_iter().enumerate() {
        let (y, _) = run(
            &ctx,
            Kind::Alpha,
            false,
            false,
            &x,
            p,
            500 + i as u64,
            1,
            Mask::Null,
        );
        let y: Vec<f64> = y.into_iter().map(f64::from).collect();
        let (mean, var, mean_bound, var_bound) = moments(&y);
        assert!(
            mean.abs() <= mean_bound,
            "p {p}: mean {mean}, want 0 +- {mean_bound}"
        );
        assert!(
            (var - 1.0).abs() <= var_bound,
            "p {p}: variance {var}, want 1 +- {var_bound}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Special values and edge cases.

#[test]
fn dropped_elements_are_positive_zero_whatever_the_input() {
    let ctx = Ctx::default_context();
    let n = 4099;
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MAX,
        -1.0,
    ];
    let x: Vec<f32> = (0..n).map(|i| specials[i % specials.len()]).collect();
    for p in [0.5f32, 1.0, 0.9] {
        let (seed, offset) = (12, 5);
        let keep = r::keep_decisions(n, p, seed, offset);
        for backward in [false, true] {
            let (y, _) = run(
                &ctx,
                Kind::Dropout,
                backward,
                false,
                &x,
                p,
                seed,
                offset,
                Mask::Null,
            );
            for i in 0..n {
                if !keep[i] {
                    assert_eq!(
                        y[i].to_bits(),
                        0,
                        "dropout (backward {backward}), p {p}, element {i}"
                    );
                }
            }
            assert_same(
                &y,
                &r::dropout_apply(&x, &keep, p),
                "dropout with special values",
            );
            let (dx, _) = run(
                &ctx,
                Kind::Alpha,
                backward,
                false,
                &x,
                p,
                seed,
                offset,
                Mask::Null,
            );
            if backward || p == 1.0 {
                for i in (0..n).filter(|&i| !keep[i]) {
                    assert_eq!(
                        dx[i].to_bits(),
                        0,
                        "alpha (backward {backward}), p {p}, element {i}"
                    );
                }
            } else {
                // Dropped elements of alpha dropout take the finite value a * alpha' + b.
                let (a, b) = r::alpha_coefficients(p);
                let want = f64::from(a) * r::ALPHA_PRIME + f64::from(b);
                for i in (0..n).filter(|&i| !keep[i]) {
                    assert!(
                        (f64::from(dx[i]) - want).abs() <= alpha_tolerance(p, 0.0, false),
                        "alpha forward, p {p}, element {i}: {} for input {}, want {want}",
                        dx[i],
                        x[i]
                    );
                }
            }
        }
        let sh = shape(7, 13, 45, false);
        let xc: Vec<f32> = (0..7 * 13 * 45)
            .map(|i| specials[i % specials.len()])
            .collect();
        let keep = r::channel_keep_decisions(7, 13, p, seed, offset);
        for backward in [false, true] {
            let (y, _) = run_channel(&ctx, sh, backward, false, &xc, p, seed, offset, Mask::Null);
            assert_same(
                &y,
                &r::channel_apply(&xc, 7, 13, 45, false, &keep, p),
                "channel dropout with special values",
            );
        }
    }
}

/// The keep rule `(r >> 8) >= ceil(p 2^24)` at its boundaries: for a word with `t = r >> 8`,
/// `p = t 2^-24` keeps the element, the next float above drops it, the next float below keeps
/// it. Each p comes from one element of a long call (so vector code is exercised), on every ISA,
/// through the mask, both masked forwards and channel dropout.
#[test]
fn keep_threshold_is_exact_at_its_boundaries() {
    let n = 256;
    let x = vec![1.0f32; n];
    let seed = 0x5EED;
    for (case, offset) in [0u64, 3, 1021, 1 << 40, u64::MAX - 300]
        .into_iter()
        .enumerate()
    {
        let words = r::words(seed, offset, n);
        for j in [0usize, 1, 7, 8, 100, 255, 31 * case + 5] {
            let t = words[j] >> 8;
            let exact = t as f32 / 16_777_216.0;
            let mut probes = vec![(exact, true), (exact.next_up(), false)];
            if t > 0 {
                probes.push((exact.next_down(), true));
            }
            for (p, kept) in probes {
                assert_eq!(r::keeps(words[j], p), kept, "the reference, t {t}, p {p:e}");
                let keep = r::keep_decisions(n, p, seed, offset);
                for ctx in contexts() {
                    let what = format!(
                        "offset {offset}, element {j} (t = {t}), p {p:e}, {}",
                        ctx.name
                    );
                    let (_, mask) = execute(
                        &[],
                        n,
                        false,
                        Mask::Out,
                        // SAFETY: a mask buffer of n bits.
                        |_, _, m| unsafe { nk_dropout_mask(ctx.ptr, n, p, seed, offset, m) },
                        &what,
                    );
                    let mask = mask.unwrap();
                    assert_eq!(
                        mask[j / 8] >> (j % 8) & 1 == 1,
                        kept,
                        "nk_dropout_mask, {what}"
                    );
                    assert_mask(&mask, &keep, &format!("nk_dropout_mask, {what}"));
                    for kind in [Kind::Dropout, Kind::Alpha] {
                        let (_, m) = run(&ctx, kind, false, false, &x, p, seed, offset, Mask::Out);
                        assert_mask(&m.unwrap(), &keep, &format!("{kind:?}, {what}"));
                    }
                    let (y, _) = run_channel(
                        &ctx,
                        shape(1, n, 3, false),
                        false,
                        false,
                        &[1.0; 3 * 256],
                        p,
                        seed,
                        offset,
                        Mask::Null,
                    );
                    assert_eq!(y[3 * j + 1] != 0.0, kept, "channel dropout, {what}");
                }
            }
        }
    }
}

#[test]
fn probability_zero_is_the_identity_and_one_drops_everything() {
    let ctx = Ctx::default_context();
    let n = 1001;
    let x = data(8, n, true);
    for p in [0.0f32, -0.0] {
        for kind in [Kind::Dropout, Kind::Alpha] {
            let (y, mask) = run(&ctx, kind, false, false, &x, p, 3, 4, Mask::Out);
            if kind == Kind::Dropout {
                assert_same(&y, &x, &format!("{kind:?} with p = {p}"));
            } else {
                // a = 1 and b = 0: the same values, but x + 0 turns -0.0 into +0.0.
                for i in 0..n {
                    assert!(
                        y[i] == x[i] || (y[i].is_nan() && x[i].is_nan()),
                        "alpha dropout with p = {p}: element {i} is {}, input {}",
                        y[i],
                        x[i]
                    );
                }
            }
            assert_mask(
                &mask.unwrap(),
                &vec![true; n],
                &format!("{kind:?} with p = {p}"),
            );
            let (dx, _) = run(&ctx, kind, true, false, &x, p, 3, 4, Mask::Null);
            assert_same(&dx, &x, &format!("{kind:?} backward with p = {p}"));
        }
    }
    for kind in [Kind::Dropout, Kind::Alpha] {
        let (y, mask) = run(&ctx, kind, false, false, &x, 1.0, 3, 4, Mask::Out);
        assert_same(&y, &vec![0.0; n], &format!("{kind:?} with p = 1"));
        assert_mask(
            &mask.unwrap(),
            &vec![false; n],
            &format!("{kind:?} with p = 1"),
        );
        let (dx, _) = run(&ctx, kind, true, false, &x, 1.0, 3, 4, Mask::Null);
        assert_same(&dx, &vec![0.0; n], &format!("{kind:?} backward with p = 1"));
    }
}

/// Checks one call that reads words up to the end of the index against the reference, and the
/// call one element further, which must fail with NK_ERR_OVERFLOW and write nothing.
#[test]
fn word_index_up_to_its_end_and_overflow_past_it() {
    let ctx = Ctx::default_context();
    for kind in KINDS {
        for n in [1usize, 5, 64] {
            let offset = max_offset(n, kind.words());
            let x = data(n as u64, n, false);
            let param = 0.4;
            let mask_arg = if kind.has_mask() {
                Mask::Out
            } else {
                Mask::Null
            };
            let (y, mask) = run(&ctx, kind, false, false, &x, param, 99, offset, mask_arg);
            check_forward(
                kind,
                &x,
                param,
                99,
                offset,
                &y,
                mask.as_deref(),
                &format!("{kind:?} at the end of the index, n {n}"),
            );
            let (dx, _) = run(&ctx, kind, true, false, &x, param, 99, offset, Mask::Null);
            let keep = decisions(kind, n, param, 99, offset);
            check_backward(
                kind,
                &x,
                param,
                99,
                offset,
                keep.as_deref(),
                Some(&y),
                &dx,
                &format!("{kind:?} backward at the end of the index"),
            );
            // One element more reads one word past the end.
            let longer = data(n as u64, n + 1, false);
            assert!(r::word_index_overflows(n as u64 + 1, offset, kind.words()));
            for backward in [false, true] {
                let mut out = vec![f32::from_bits(SENTINEL); n + 1];
                let mut m = vec![0xA5u8; r::mask_bytes(n + 1)];
                let mptr = if kind.has_mask() {
                    m.as_mut_ptr()
                } else {
                    null_mut()
                };
                // SAFETY: buffers of n elements.
                let status = unsafe {
                    raw(
                        kind,
                        backward,
                        ctx.ptr,
                        n + 1,
                        longer.as_ptr(),
                        out.as_mut_ptr(),
                        param,
                        99,
                        offset,
                        mptr,
                    )
                };
                assert_eq!(
                    status, NK_ERR_OVERFLOW,
                    "{kind:?} (backward {backward}) past the end, n {n}"
                );
                assert!(
                    out.iter().all(|v| v.to_bits() == SENTINEL),
                    "{kind:?}: wrote on error"
                );
                assert!(
                    m.iter().all(|&b| b == 0xA5),
                    "{kind:?}: wrote the mask on error"
                );
            }
        }
        // No word is read by an empty call: any offset is fine.
        for offset in [u64::MAX, 1 << 63] {
            // SAFETY: empty call with NULL data.
            let status = unsafe {
                raw(
                    kind,
                    false,
                    ctx.ptr,
                    0,
                    null(),
                    null_mut(),
                    0.4,
                    1,
                    offset,
                    null_mut(),
                )
            };
            assert_eq!(status, NK_OK, "{kind:?}: n = 0 at offset {offset}");
        }
    }
    // The mask alone, and channel dropout counting (n, c) pairs.
    let n = 77;
    let offset = max_offset(n, 1);
    let (_, mask) = execute(
        &[],
        n,
        false,
        Mask::Out,
        // SAFETY: a mask of n bits.
        |_, _, m| unsafe { nk_dropout_mask(ctx.ptr, n, 0.3, 5, offset, m) },
        "nk_dropout_mask at the end of the index",
    );
    assert_eq!(mask.unwrap(), r::dropout_mask(n, 0.3, 5, offset));
    let mut m = vec![0xA5u8; r::mask_bytes(n)];
    // SAFETY: a mask of n bits.
    let status = unsafe { nk_dropout_mask(ctx.ptr, n, 0.3, 5, offset + 1, m.as_mut_ptr()) };
    assert_eq!(status, NK_ERR_OVERFLOW);
    assert!(m.iter().all(|&b| b == 0xA5));

    let (batch, channels, spatial) = (3, 5, 4);
    let sh = shape(batch, channels, spatial, true);
    let xc = data(9, batch * channels * spatial, true);
    let offset = max_offset(batch * channels, 1);
    let (y, mask) = run_channel(&ctx, sh, false, false, &xc, 0.5, 8, offset, Mask::Out);
    let keep = r::channel_keep_decisions(batch, channels, 0.5, 8, offset);
    assert_same(
        &y,
        &r::channel_apply(&xc, batch, channels, spatial, true, &keep, 0.5),
        "channel at the end",
    );
    assert_mask(&mask.unwrap(), &keep, "channel at the end");
    for backward in [false, true] {
        let mut out = vec![f32::from_bits(SENTINEL); xc.len()];
        let mut m = vec![0xA5u8; 2];
        // SAFETY: buffers of the shape's sizes.
        let status = unsafe {
            raw_channel(
                backward,
                ctx.ptr,
                sh,
                xc.as_ptr(),
                out.as_mut_ptr(),
                0.5,
                8,
                offset + 1,
                m.as_mut_ptr(),
            )
        };
        assert_eq!(
            status, NK_ERR_OVERFLOW,
            "channel dropout (backward {backward}) past the end"
        );
        assert!(out.iter().all(|v| v.to_bits() == SENTINEL));
        assert!(m.iter().all(|&b| b == 0xA5));
    }
}

// ---------------------------------------------------------------------------------------------
// The error contract.

/// Elements of the fixture's elementwise tensors (not a multiple of 8).
const N: usize = 37;
/// Offsets in bytes of the fixture's buffers inside the arena.
const X_AT: usize = 64;
const Y_AT: usize = 256;
const M_AT: usize = 448;
const ARENA_BYTES: usize = 640;

/// Buffers of the error tests: an arena (see `common::arena`) with the fixture's buffers at
/// fixed offsets.
impl Arena {
    fn new_fixture() -> Arena {
        let mut a = Arena::new(ARENA_BYTES);
        // Valid data in x (and dy): finite values.
        write(
            a.f32_at(X_AT),
            &(0..N).map(|i| i as f32 - 10.5).collect::<Vec<_>>(),
        );
        a
    }

    /// May be misaligned on purpose.
    fn f32_at(&mut self, byte: usize) -> *mut f32 {
        self.at(byte)
    }

    fn u8_at(&mut self, byte: usize) -> *mut u8 {
        self.at(byte)
    }
}

/// The arguments of one elementwise call: pointers inside an arena, sizes and scalars.
#[derive(Clone, Copy)]
struct Args {
    n: usize,
    src: *const f32,
    dst: *mut f32,
    param: f32,
    offset: u64,
    mask: *mut u8,
}

/// Calls `kind` with `args` (built by `edit` from the valid fixture) and checks the status,
/// the message, and that no byte of the arena changed unless the call succeeded.
#[track_caller]
fn expect(
    kind: Kind,
    backward: bool,
    edit: impl FnOnce(&mut Args, &mut Arena),
    want: nk_status,
    what: &str,
) {
    let mut arena = Arena::new_fixture();
    let mut args = Args {
        n: N,
        src: arena.f32_at(X_AT),
        dst: arena.f32_at(Y_AT),
        param: if kind == Kind::Uniform { 0.5 } else { 0.25 },
        offset: 3,
        mask: if kind.has_mask() {
            arena.u8_at(M_AT)
        } else {
            null_mut()
        },
    };
    edit(&mut args, &mut arena);
    let before = arena.bytes();
    for ctx in [null_mut(), SHARED_CTX.with(|c| c.ptr)] {
        // SAFETY: pointers inside the arena, or NULL, or what the case provokes on purpose; the
        // cases that would touch memory outside are errors the call must detect first.
        let status = unsafe {
            raw(
                kind,
                backward,
                ctx,
                args.n,
                args.src,
                args.dst,
                args.param,
                77,
                args.offset,
                args.mask,
            )
        };
        let label = format!(
            "{kind:?} {}: {what}",
            if backward { "backward" } else { "forward" }
        );
        assert_eq!(status, want, "{label} ({})", last_error());
        if want != NK_OK {
            assert!(!last_error().is_empty(), "{label}: no error message");
            assert!(
                arena.bytes() == before,
                "{label}: the arena changed on error"
            );
        }
    }
}

thread_local! {
    static SHARED_CTX: Ctx = Ctx::new(2, Isa::best());
}

#[test]
fn error_contract_of_the_elementwise_operations() {
    let f = |a: &mut Arena, at: usize| a.f32_at(at);
    for kind in KINDS {
        for backward in [false, true] {
            // Valid calls, as a baseline.
            expect(kind, backward, |_, _| {}, NK_OK, "valid call");
            expect(kind, backward, |a, _| a.mask = null_mut(), NK_OK, "no mask");
            expect(
                kind,
                backward,
                |a, _| a.dst = a.src.cast_mut(),
                NK_OK,
                "in place",
            );
            expect(kind, backward, |a, _| a.param = -0.0, NK_OK, "-0.0");

            // NULL pointers: the data (dx included, required for backward too).
            expect(
                kind,
                backward,
                |a, _| a.src = null(),
                NK_ERR_NULL_POINTER,
                "NULL input",
            );
            expect(
                kind,
                backward,
                |a, _| a.dst = null_mut(),
                NK_ERR_NULL_POINTER,
                "NULL output",
            );

            // Scalars.
            let bad: &[f32] = if kind == Kind::Uniform {
                &[-0.5, -1e-30, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]
            } else {
                &[
                    1.5,
                    -0.25,
                    1.0000001,
                    -1e-30,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    f32::NAN,
                ]
            };
            for &v in bad {
                expect(
                    kind,
                    backward,
                    |a, _| a.param = v,
                    NK_ERR_BAD_ARGUMENT,
                    &format!("parameter {v}"),
                );
                // Scalars are checked even when there is no data.
                expect(
                    kind,
                    backward,
                    |a, _| {
                        a.param = v;
                        a.n = 0;
                        a.src = null();
                        a.dst = null_mut();
                        a.mask = null_mut();
                    },
                    NK_ERR_BAD_ARGUMENT,
                    &format!("parameter {v}, n = 0"),
                );
            }
            if kind == Kind::Gaussian {
                expect(
                    kind,
                    backward,
                    |a, _| a.param = 1.0,
                    NK_ERR_BAD_ARGUMENT,
                    "p = 1",
                );
            } else {
                expect(kind, backward, |a, _| a.param = 1.0, NK_OK, "p or beta = 1");
            }
            if kind == Kind::Uniform {
                expect(kind, backward, |a, _| a.param = 3.0, NK_OK, "beta = 3");
            }

            // Empty calls: NULL data is fine.
            expect(
                kind,
                backward,
                |a, _| {
                    a.n = 0;
                    a.src = null();
                    a.dst = null_mut();
                    a.mask = null_mut();
                },
                NK_OK,
                "n = 0 with NULL pointers",
            );

            // Overflow: of the word index, and of the byte count.
            let past = max_offset(N, kind.words()) + 1;
            expect(
                kind,
                backward,
                |a, _| a.offset = past,
                NK_ERR_OVERFLOW,
                "word index past 2^64 - 1",
            );
            expect(
                kind,
                backward,
                |a, _| a.offset = u64::MAX,
                NK_ERR_OVERFLOW,
                "offset 2^64 - 1",
            );
            expect(
                kind,
                backward,
                |a, _| a.n = usize::MAX / 4 + 1,
                NK_ERR_OVERFLOW,
                "byte count overflows",
            );

            // Alignment of the float pointers.
            for shift in [1usize, 2, 3] {
                expect(
                    kind,
                    backward,
                    |a, ar| a.src = f(ar, X_AT + shift),
                    NK_ERR_MISALIGNED,
                    &format!("input moved by {shift} bytes"),
                );
                expect(
                    kind,
                    backward,
                    |a, ar| a.dst = f(ar, Y_AT + shift),
                    NK_ERR_MISALIGNED,
                    &format!("output moved by {shift} bytes"),
                );
            }

            // Overlaps.
            expect(
                kind,
                backward,
                |a, ar| a.dst = f(ar, X_AT + 4),
                NK_ERR_ALIAS,
                "output one element after the input",
            );
            expect(
                kind,
                backward,
                |a, ar| a.dst = f(ar, X_AT - 4),
                NK_ERR_ALIAS,
                "output one element before the input",
            );
            expect(
                kind,
                backward,
                |a, ar| a.dst = f(ar, X_AT + 4 * (N - 1)),
                NK_ERR_ALIAS,
                "output overlapping the input's last element",
            );
            if kind.has_mask() {
                let x_mask = |a: &mut Args, ar: &mut Arena| a.mask = ar.u8_at(X_AT + 5);
                let y_mask = |a: &mut Args, ar: &mut Arena| a.mask = ar.u8_at(Y_AT + 4 * N - 2);
                if backward {
                    // The mask is an input of backward: it may not overlap dx.
                    expect(kind, backward, y_mask, NK_ERR_ALIAS, "mask overlapping dx");
                } else {
                    expect(kind, backward, x_mask, NK_ERR_ALIAS, "mask overlapping x");
                    expect(kind, backward, y_mask, NK_ERR_ALIAS, "mask overlapping y");
                    expect(
                        kind,
                        backward,
                        |a, ar| a.mask = ar.u8_at(Y_AT),
                        NK_ERR_ALIAS,
                        "mask at y",
                    );
                    expect(
                        kind,
                        backward,
                        |a, ar| {
                            a.dst = a.src.cast_mut();
                            a.mask = ar.u8_at(X_AT + 1);
                        },
                        NK_ERR_ALIAS,
                        "in place, mask overlapping x",
                    );
                }
                // Right after y: no overlap.
                expect(
                    kind,
                    backward,
                    |a, ar| a.mask = ar.u8_at(Y_AT + 4 * N),
                    NK_OK,
                    "mask right after the output",
                );
            }

            // Precedence: NULL, overflow, bad argument, misaligned, alias.
            expect(
                kind,
                backward,
                |a, _| {
                    a.src = null();
                    a.offset = u64::MAX;
                    a.param = f32::NAN;
                },
                NK_ERR_NULL_POINTER,
                "NULL before overflow and argument",
            );
            expect(
                kind,
                backward,
                |a, ar| {
                    a.offset = u64::MAX;
                    a.param = f32::NAN;
                    a.dst = f(ar, X_AT + 1);
                },
                NK_ERR_OVERFLOW,
                "overflow before argument, alignment and alias",
            );
            expect(
                kind,
                backward,
                |a, ar| {
                    a.param = f32::NAN;
                    a.dst = f(ar, X_AT + 2);
                },
                NK_ERR_BAD_ARGUMENT,
                "argument before alignment and alias",
            );
            expect(
                kind,
                backward,
                |a, ar| a.dst = f(ar, X_AT + 6),
                NK_ERR_MISALIGNED,
                "alignment before alias",
            );
        }
    }
}

#[test]
fn error_contract_of_the_mask() {
    let ctx = Ctx::default_context();
    let call = |n: usize, p: f32, offset: u64, mask: *mut u8| {
        // SAFETY: the cases below pass a 16-byte buffer, NULL, or an error the call detects.
        unsafe { nk_dropout_mask(ctx.ptr, n, p, 5, offset, mask) }
    };
    let mut buf = [0xA5u8; 16];
    let p = buf.as_mut_ptr();
    let cases: &[(usize, f32, u64, bool, nk_status, &str)] = &[
        (100, 0.5, 0, true, NK_ERR_NULL_POINTER, "NULL mask"),
        (100, f32::NAN, 0, false, NK_ERR_BAD_ARGUMENT, "NaN p"),
        (100, 1.01, 0, false, NK_ERR_BAD_ARGUMENT, "p > 1"),
        (100, -0.01, 0, false, NK_ERR_BAD_ARGUMENT, "p < 0"),
        (0, 2.0, 0, true, NK_ERR_BAD_ARGUMENT, "p = 2, n = 0"),
        (
            100,
            0.5,
            u64::MAX - 98,
            false,
            NK_ERR_OVERFLOW,
            "word index past 2^64 - 1",
        ),
        (
            usize::MAX,
            0.5,
            2,
            false,
            NK_ERR_OVERFLOW,
            "n = 2^64 - 1 at offset 2",
        ),
        (
            100,
            f32::NAN,
            u64::MAX,
            true,
            NK_ERR_NULL_POINTER,
            "NULL first",
        ),
        (
            100,
            f32::NAN,
            u64::MAX,
            false,
            NK_ERR_OVERFLOW,
            "overflow before argument",
        ),
        (
            0,
            0.5,
            u64::MAX,
            true,
            NK_OK,
            "n = 0, NULL mask, any offset",
        ),
    ];
    for &(n, prob, offset, null_mask, want, what) in cases {
        let status = call(n, prob, offset, if null_mask { null_mut() } else { p });
        assert_eq!(status, want, "nk_dropout_mask: {what} ({})", last_error());
        if want != NK_OK {
            assert!(!last_error().is_empty(), "{what}: no message");
        }
        assert!(
            buf.iter().all(|&b| b == 0xA5),
            "nk_dropout_mask: {what}: wrote the mask"
        );
    }
}

#[test]
fn error_contract_of_channel_dropout() {
    // A 2x3x5 tensor: 30 floats, a mask of 6 bits.
    let (b, c, s) = (2usize, 3usize, 5usize);
    let total = b * c * s;
    for backward in [false, true] {
        let check =
            |edit: &dyn Fn(&mut nk_shape, &mut Args, &mut Arena), want: nk_status, what: &str| {
                let mut arena = Arena::new_fixture();
                let mut sh = shape(b, c, s, false);
                let mut a = Args {
                    n: total,
                    src: arena.f32_at(X_AT),
                    dst: arena.f32_at(Y_AT),
                    param: 0.5,
                    offset: 11,
                    mask: arena.u8_at(M_AT),
                };
                edit(&mut sh, &mut a, &mut arena);
                let before = arena.bytes();
                // SAFETY: pointers inside the arena or NULL, or errors the call must detect.
                let status = unsafe {
                    raw_channel(
                        backward,
                        null_mut(),
                        sh,
                        a.src,
                        a.dst,
                        a.param,
                        1,
                        a.offset,
                        a.mask,
                    )
                };
                let label = format!("channel dropout (backward {backward}): {what}");
                assert_eq!(status, want, "{label} ({})", last_error());
                if want != NK_OK {
                    assert!(!last_error().is_empty(), "{label}: no message");
                    assert!(arena.bytes() == before, "{label}: the arena changed");
                }
            };
        check(&|_, _, _| {}, NK_OK, "valid");
        check(&|_, a, _| a.mask = null_mut(), NK_OK, "no mask");
        check(&|_, a, _| a.dst = a.src.cast_mut(), NK_OK, "in place");
        check(&|sh, _, _| sh.layout = 1, NK_OK, "channels last");
        check(&|_, a, _| a.src = null(), NK_ERR_NULL_POINTER, "NULL input");
        check(
            &|_, a, _| a.dst = null_mut(),
            NK_ERR_NULL_POINTER,
            "NULL output",
        );
        for v in [f32::NAN, 1.5, -0.5, f32::INFINITY] {
            check(
                &|_, a, _| a.param = v,
                NK_ERR_BAD_ARGUMENT,
                &format!("p = {v}"),
            );
        }
        check(
            &|sh, _, _| sh.layout = 2,
            NK_ERR_BAD_ARGUMENT,
            "unknown layout 2",
        );
        check(
            &|sh, _, _| sh.layout = -1,
            NK_ERR_BAD_ARGUMENT,
            "unknown layout -1",
        );
        check(
            &|sh, a, _| {
                sh.batch = 0;
                a.src = null();
                a.dst = null_mut();
                a.mask = null_mut();
            },
            NK_OK,
            "empty batch, NULL pointers",
        );
        check(
            &|sh, a, _| {
                sh.spatial = 0;
                a.src = null();
                a.dst = null_mut();
                a.mask = null_mut();
            },
            NK_OK,
            "empty spatial, NULL pointers",
        );
        check(
            &|sh, a, _| {
                sh.batch = 0;
                a.param = f32::NAN;
            },
            NK_ERR_BAD_ARGUMENT,
            "NaN p, empty",
        );
        check(
            &|_, a, _| a.offset = u64::MAX - 4,
            NK_ERR_OVERFLOW,
            "pair index past 2^64 - 1",
        );
        check(
            &|sh, _, _| sh.spatial = usize::MAX / 2,
            NK_ERR_OVERFLOW,
            "element count overflows",
        );
        check(
            &|sh, _, _| sh.spatial = usize::MAX / 24 + 1,
            NK_ERR_OVERFLOW,
            "byte count overflows",
        );
        check(
            &|_, a, ar| a.src = ar.f32_at(X_AT + 2),
            NK_ERR_MISALIGNED,
            "misaligned input",
        );
        check(
            &|_, a, ar| a.dst = ar.f32_at(Y_AT + 1),
            NK_ERR_MISALIGNED,
            "misaligned output",
        );
        check(
            &|_, a, ar| a.dst = ar.f32_at(X_AT + 8),
            NK_ERR_ALIAS,
            "output overlapping the input",
        );
        check(
            &|_, a, ar| a.mask = ar.u8_at(Y_AT + 4 * total - 1),
            NK_ERR_ALIAS,
            "mask overlapping the output",
        );
        if !backward {
            check(
                &|_, a, ar| a.mask = ar.u8_at(X_AT + 7),
                NK_ERR_ALIAS,
                "mask overlapping the input",
            );
        }
        check(
            &|_, a, ar| a.mask = ar.u8_at(Y_AT + 4 * total),
            NK_OK,
            "mask right after the output",
        );
        check(
            &|_, a, ar| {
                a.src = null();
                a.offset = u64::MAX;
                a.dst = ar.f32_at(Y_AT + 1);
            },
            NK_ERR_NULL_POINTER,
            "NULL first",
        );
        check(
            &|sh, a, _| {
                sh.layout = 7;
                a.offset = u64::MAX;
            },
            NK_ERR_OVERFLOW,
            "overflow before a bad layout",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The safe Rust API.

/// `normkit::dropout::*` gives bitwise what the C functions give (which the tests above hold to
/// the reference), out of place and in place, with and without masks; its generator functions
/// match the reference; and its checks reject what the contract rejects.
#[test]
fn safe_api_matches_the_c_functions() {
    use normkit::dropout as d;
    use normkit::{Context, ErrorKind, InOut, Layout, Shape};

    for (counter, key, want) in r::PHILOX4X32_10_KAT {
        assert_eq!(d::philox4x32_10(counter, key), want);
    }
    for w in [0u64, 1, 5, 1 << 34, u64::MAX] {
        assert_eq!(d::stream_word(99, w), r::word(99, w), "stream_word({w})");
    }
    assert_eq!(d::mask_len(17), 3);

    let n = 1001;
    let (seed, offset) = (0xABCDu64, 13u64);
    let x = data(40, n, false);
    for isa in Isa::supported() {
        let ctx = Context::new(1).unwrap();
        ctx.set_isa(Some(isa)).unwrap();
        let c_ctx = Ctx::new(1, isa);
        let what = format!("{isa:?}");

        let mut mask = vec![0u8; d::mask_len(n)];
        d::mask(&ctx, n, 0.3, Stream::new(seed, offset), &mut mask).unwrap();
        assert_eq!(mask, r::dropout_mask(n, 0.3, seed, offset), "mask, {what}");

        for kind in KINDS {
            let param = if kind == Kind::Uniform { 0.6 } else { 0.3 };
            let mask_arg = if kind.has_mask() {
                Mask::Out
            } else {
                Mask::Null
            };
            let (want_y, want_mask) = run(
                &c_ctx, kind, false, false, &x, param, seed, offset, mask_arg,
            );
            let (want_dx, _) = run(
                &c_ctx,
                kind,
                true,
                false,
                &x,
                param,
                seed,
                offset,
                Mask::Null,
            );
            for in_place in [false, true] {
                let mut y = vec![0.0f32; n];
                let mut buf = x.clone();
                let io = if in_place {
                    InOut::InPlace(&mut buf)
                } else {
                    InOut::separate(&x, &mut y).unwrap()
                };
                let mut m = vec![0u8; d::mask_len(n)];
                let m_out = kind.has_mask().then_some(&mut m[..]);
                match kind {
                    Kind::Dropout => d::forward(&ctx, io, param, Stream::new(seed, offset), m_out),
                    Kind::Alpha => {
                        d::alpha_forward(&ctx, io, param, Stream::new(seed, offset), m_out)
                    }
                    Kind::Gaussian => {
                        d::gaussian_forward(&ctx, io, param, Stream::new(seed, offset))
                    }
                    Kind::Uniform => d::uniform_forward(&ctx, io, param, Stream::new(seed, offset)),
                }
                .unwrap();
                let got = if in_place { &buf } else { &y };
                let label = format!("{kind:?} forward (in place {in_place}), {what}");
                assert_same(got, &want_y, &label);
                if let Some(want_mask) = &want_mask {
                    assert_eq!(&m, want_mask, "{label}: mask");
                }

                // Backward, made again and (masked variants) from the mask.
                for use_mask in [false, true] {
                    if use_mask && !kind.has_mask() {
                        continue;
                    }
                    let mut dx = vec![0.0f32; n];
                    let mut buf = x.clone();
                    let io = if in_place {
                        InOut::InPlace(&mut buf)
                    } else {
                        InOut::separate(&x, &mut dx).unwrap()
                    };
                    let m_in = use_mask.then_some(&m[..]);
                    match kind {
                        Kind::Dropout => {
                            d::backward(&ctx, io, param, Stream::new(seed, offset), m_in)
                        }
                        Kind::Alpha => {
                            d::alpha_backward(&ctx, io, param, Stream::new(seed, offset), m_in)
                        }
                        Kind::Gaussian => {
                            d::gaussian_backward(&ctx, io, param, Stream::new(seed, offset))
                        }
                        Kind::Uniform => {
                            d::uniform_backward(&ctx, io, param, Stream::new(seed, offset))
                        }
                    }
                    .unwrap();
                    let got = if in_place { &buf } else { &dx };
                    assert_same(
                        got,
                        &want_dx,
                        &format!(
                            "{kind:?} backward (mask {use_mask}, in place {in_place}), {what}"
                        ),
                    );
                }
            }
        }

        for (layout, channels_last) in [(Layout::Ncs, false), (Layout::Nsc, true)] {
            let (b, c, s) = (7, 11, 13);
            let xc = data(41, b * c * s, true);
            let (want_y, want_mask) = run_channel(
                &c_ctx,
                shape(b, c, s, channels_last),
                false,
                false,
                &xc,
                0.45,
                seed,
                offset,
                Mask::Out,
            );
            let sh = Shape::new(b, c, s, layout);
            let mut y = vec![0.0f32; b * c * s];
            let mut m = vec![0u8; d::mask_len(b * c)];
            d::channel_forward(
                &ctx,
                sh,
                InOut::separate(&xc, &mut y).unwrap(),
                0.45,
                Stream::new(seed, offset),
                Some(&mut m),
            )
            .unwrap();
            assert_same(&y, &want_y, &format!("channel forward {layout:?}, {what}"));
            assert_eq!(
                Some(&m),
                want_mask.as_ref(),
                "channel mask {layout:?}, {what}"
            );
            let mut buf = xc.clone();
            d::channel_backward(
                &ctx,
                sh,
                InOut::InPlace(&mut buf),
                0.45,
                Stream::new(seed, offset),
                Some(&m),
            )
            .unwrap();
            assert_same(
                &buf,
                &want_y,
                &format!("channel backward {layout:?}, {what}"),
            );
        }

        // The checks: a mask of the wrong length, bad scalars, the word index.
        let mut y = vec![0.0f32; n];
        let mut short = vec![0u8; d::mask_len(n) - 1];
        let kind_of = |r: normkit::Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind_of(d::mask(&ctx, n, 0.3, Stream::new(seed, offset), &mut short)),
            ErrorKind::BadShape
        );
        assert_eq!(
            kind_of(d::forward(
                &ctx,
                InOut::separate(&x, &mut y).unwrap(),
                0.3,
                Stream::new(seed, offset),
                Some(&mut short)
            )),
            ErrorKind::BadShape
        );
        assert_eq!(
            kind_of(d::forward(
                &ctx,
                InOut::separate(&x, &mut y).unwrap(),
                f32::NAN,
                Stream::new(seed, offset),
                None
            )),
            ErrorKind::BadArgument
        );
        assert_eq!(
            kind_of(d::gaussian_forward(
                &ctx,
                InOut::separate(&x, &mut y).unwrap(),
                1.0,
                Stream::new(seed, offset)
            )),
            ErrorKind::BadArgument
        );
        assert_eq!(
            kind_of(d::uniform_forward(
                &ctx,
                InOut::separate(&x, &mut y).unwrap(),
                -1.0,
                Stream::new(seed, offset)
            )),
            ErrorKind::BadArgument
        );
        assert_eq!(
            kind_of(d::backward(
                &ctx,
                InOut::separate(&x, &mut y).unwrap(),
                0.3,
                Stream::new(seed, u64::MAX - 10),
                None
            )),
            ErrorKind::Overflow
        );
        assert!(
            y.iter().all(|&v| v == 0.0) && short.iter().all(|&b| b == 0),
            "the safe API wrote on error"
        );
    }
}

/// Sizes around the boundaries of the work split over threads (every multiple of 2^15 elements
/// in the library today, but the test does not rely on it), at offsets inside a block of four
/// words and a mask byte, and channel shapes where one (n, c) pair spans many threads or many
/// pairs share a cache line, on every ISA with 1, 2 and 3 threads and an executor running the
/// tasks on 3 threads of the host.
#[test]
fn odd_sizes_and_shapes_on_every_context() {
    let mut contexts = Vec::new();
    for isa in Isa::supported() {
        for threads in [1, 2, 3] {
            contexts.push(Ctx::new(threads, isa));
        }
        contexts.push(Ctx::executor(true, isa));
    }
    for ctx in &contexts {
        for n in [(1usize << 15) - 3, (1 << 15) + 1, (3 << 15) + 7] {
            for offset in [0u64, 3, 9] {
                for kind in KINDS {
                    let x = data(n as u64, n, kind == Kind::Dropout);
                    let param = if kind == Kind::Uniform { 1.5 } else { 0.6 };
                    let what = format!("{kind:?}, n {n}, offset {offset}, {}", ctx.name);
                    let mask_arg = if kind.has_mask() {
                        Mask::Out
                    } else {
                        Mask::Null
                    };
                    let (y, mask) = run(ctx, kind, false, false, &x, param, 8, offset, mask_arg);
                    check_forward(kind, &x, param, 8, offset, &y, mask.as_deref(), &what);
                    if let Some(mask) = &mask {
                        let (dx, _) =
                            run(ctx, kind, true, true, &x, param, 8, offset, Mask::In(mask));
                        let keep = r::unpack(mask, n);
                        check_backward(kind, &x, param, 8, offset, Some(&keep), None, &dx, &what);
                    }
                }
            }
        }
        for (b, c, s) in [
            (1usize, 1usize, 100_003usize),
            (100_003, 1, 1),
            (3, 70_000, 1),
            (2, 3, 50_000),
        ] {
            for channels_last in [false, true] {
                let offset = 5;
                let x = data(b as u64, b * c * s, true);
                let keep = r::channel_keep_decisions(b, c, 0.37, 3, offset);
                let want = r::channel_apply(&x, b, c, s, channels_last, &keep, 0.37);
                let sh = shape(b, c, s, channels_last);
                let what = format!("channel {b}x{c}x{s}, last {channels_last}, {}", ctx.name);
                let (y, mask) = run_channel(ctx, sh, false, false, &x, 0.37, 3, offset, Mask::Out);
                assert_same(&y, &want, &what);
                assert_mask(&mask.unwrap(), &keep, &what);
                let (dx, _) = run_channel(ctx, sh, true, true, &x, 0.37, 3, offset, Mask::Null);
                assert_same(&dx, &want, &format!("{what}: backward in place"));
            }
        }
    }
}

/// With `p = 1` every gradient is exactly `+0.0`, even where a passed mask says "kept" (no
/// forward with `p = 1` keeps anything): not `dy * inf` (inverted dropout) or `dy * 0` = `-0.0`
/// (alpha dropout).
#[test]
fn backward_with_p_one_ignores_a_mask_that_keeps() {
    let dy = [-3.0f32, 2.0, -0.5, f32::NAN, f32::NEG_INFINITY, 7.0];
    let mask = [0xffu8];
    for alpha in [false, true] {
        let mut dx = [1.0f32; 6];
        // SAFETY: every pointer is valid for its extent.
        let status = unsafe {
            if alpha {
                nk_alpha_dropout_backward(
                    null_mut(),
                    6,
                    dy.as_ptr(),
                    dx.as_mut_ptr(),
                    1.0,
                    7,
                    0,
                    mask.as_ptr(),
                )
            } else {
                nk_dropout_backward(
                    null_mut(),
                    6,
                    dy.as_ptr(),
                    dx.as_mut_ptr(),
                    1.0,
                    7,
                    0,
                    mask.as_ptr(),
                )
            }
        };
        assert_eq!(status, NK_OK);
        assert!(dx.iter().all(|v| v.to_bits() == 0), "alpha {alpha}: {dx:?}");
    }
    for channels_last in [false, true] {
        let mut dx = [1.0f32; 6];
        // SAFETY: every pointer is valid for its extent.
        let status = unsafe {
            nk_channel_dropout_backward(
                null_mut(),
                shape(1, 2, 3, channels_last),
                dy.as_ptr(),
                dx.as_mut_ptr(),
                1.0,
                7,
                0,
                mask.as_ptr(),
            )
        };
        assert_eq!(status, NK_OK);
        assert!(dx.iter().all(|v| v.to_bits() == 0), "channel: {dx:?}");
    }
}
