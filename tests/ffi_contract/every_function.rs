//! The C contract of every exported operation, from one table.
//!
//! Each entry of [`table`] gives a function's buffers as the header states them (element type,
//! extent in the valid call, input or output, required or optional, which input an output may
//! replace in place), the scalars of a valid call, the violations of its own sizes and scalars
//! (overflow, shape, argument), and a closure that makes the call. From that alone, every case
//! below is derived and checked on a fresh arena (see `common::arena`):
//!
//! - the valid call, and the same call on a context of its own, succeed;
//! - each required pointer NULL: `NK_ERR_NULL_POINTER`; each optional one NULL: success (both
//!   of a pair, e.g. the running statistics: success, one alone: `NK_ERR_NULL_POINTER`);
//! - each pointer moved off its element alignment: `NK_ERR_MISALIGNED`;
//! - each output placed exactly over, or partly over, any other buffer, and each input placed
//!   partly over an output: `NK_ERR_ALIAS`, except an output exactly over the input the header
//!   lets it replace (same extent), which succeeds;
//! - the function's own size, shape and argument violations, with their statuses;
//! - the order between classes, as `src/ffi/mod.rs` states it: NULL first; then the size, shape
//!   and argument checks; then alignment; then overlap (each combination of a representative of
//!   one class with one of a later class gives the earlier class's status);
//! - after every error: no byte of the arena changed, and `nk_last_error_message` is not empty
//!   and, for a NULL, misaligned or overlapping pointer, names it.
//!
//! A new function needs one table entry (usually one line in an existing family); the test
//! [`every_exported_function_is_in_the_table`] fails until it has one.

use super::common::arena::{Arena, GAP};
use super::last_error;
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::rc::Rc;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// The description of a function.

/// Element types of buffers, by size: what alignment and overlap depend on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    U8,
    /// bf16 or f16.
    Half,
    F32,
    F64,
    /// A pointer (the `out` of the context constructors).
    Ptr,
    /// An `nk_executor`.
    Executor,
}

impl Ty {
    fn size(self) -> usize {
        match self {
            Ty::U8 => 1,
            Ty::Half => 2,
            Ty::F32 => 4,
            Ty::F64 | Ty::Ptr => 8,
            Ty::Executor => size_of::<nk_executor>(),
        }
    }

    fn align(self) -> usize {
        match self {
            Ty::Executor => align_of::<nk_executor>(),
            t => t.size(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Need {
    Required,
    Optional,
    /// Optional, but only together with the named buffer (both or neither).
    Pair(&'static str),
}

/// One pointer argument.
#[derive(Clone, Copy, Debug)]
struct Buf {
    name: &'static str,
    ty: Ty,
    /// Elements in the valid call.
    len: usize,
    writes: bool,
    need: Need,
    /// The inputs this output may be exactly (in place).
    replaces: &'static [&'static str],
}

impl Buf {
    fn bytes(&self) -> usize {
        self.len * self.ty.size()
    }
}

fn input(name: &'static str, ty: Ty, len: usize) -> Buf {
    Buf {
        name,
        ty,
        len,
        writes: false,
        need: Need::Required,
        replaces: &[],
    }
}

fn output(name: &'static str, ty: Ty, len: usize) -> Buf {
    Buf {
        writes: true,
        ..input(name, ty, len)
    }
}

impl Buf {
    fn optional(self) -> Buf {
        Buf {
            need: Need::Optional,
            ..self
        }
    }

    fn pair(self, with: &'static str) -> Buf {
        Buf {
            need: Need::Pair(with),
            ..self
        }
    }

    fn replacing(self, inputs: &'static [&'static str]) -> Buf {
        Buf {
            replaces: inputs,
            ..self
        }
    }
}

/// Every argument of a call: the scalars (each function reads the ones it takes) and the
/// pointers, by name.
#[derive(Clone, Debug)]
struct Args {
    ctx: *mut nk_context,
    shape: nk_shape,
    groups: usize,
    rows: usize,
    cols: usize,
    /// Elements of an elementwise call; channels of a merge.
    n: usize,
    count: u64,
    count_b: u64,
    eps: f32,
    momentum: f32,
    /// `p` of the dropout family, `beta` of uniform dropout.
    p: f32,
    flags: u32,
    seed: u64,
    offset: u64,
    /// `nk_isa` of `nk_context_set_isa`, `num_threads` of `nk_context_create`.
    value: usize,
    /// dtype and stride of the row tensors x, residual, sum, y.
    tensors: [(c_int, usize); 4],
    ptrs: Vec<(&'static str, *mut u8)>,
}

impl Args {
    fn ptr<T>(&self, name: &str) -> *mut T {
        self.ptrs
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no buffer {name}"))
            .1
            .cast()
    }

    fn set(&mut self, name: &str, p: *mut u8) {
        self.ptrs.iter_mut().find(|(n, _)| *n == name).unwrap().1 = p;
    }

    /// Row tensor `k` (0 x, 1 residual, 2 sum, 3 y), its data the buffer `name`.
    fn tensor(&self, name: &str, k: usize) -> nk_rows {
        nk_rows {
            data: self.ptr::<c_void>(name),
            dtype: self.tensors[k].0,
            stride: self.tensors[k].1,
        }
    }
}

type CallFn = fn(&Args) -> nk_status;

/// A variation of the valid call and the status the contract gives it.
#[derive(Clone)]
struct Case {
    what: String,
    want: nk_status,
    edit: Rc<dyn Fn(&mut Args)>,
    /// Pointers the edit moves or reads the address of (a combination of two cases must touch
    /// different ones).
    touches: Vec<&'static str>,
    /// Names the error message must contain.
    names: Vec<&'static str>,
    /// Whether the required pointers stay required (false when the edit leaves the call
    /// without data, where NULL data is allowed).
    keeps_data: bool,
}

fn case(what: impl Into<String>, want: nk_status, edit: impl Fn(&mut Args) + 'static) -> Case {
    Case {
        what: what.into(),
        want,
        edit: Rc::new(edit),
        touches: Vec::new(),
        names: Vec::new(),
        keeps_data: true,
    }
}

impl Case {
    fn without_data(self) -> Case {
        Case {
            keeps_data: false,
            ..self
        }
    }

    fn touching(self, names: &[&'static str]) -> Case {
        Case {
            touches: names.to_vec(),
            ..self
        }
    }
}

struct Function {
    name: &'static str,
    bufs: Vec<Buf>,
    /// The valid call's scalars (`ptrs` empty: filled from `bufs`).
    base: Args,
    /// Violations of the function's own sizes and scalars (and valid variations).
    cases: Vec<Case>,
    call: CallFn,
    /// Whether the first argument is a context (NULL: the default one).
    ctx: bool,
    /// Whether the header's overlap rule applies (it does to every operation on tensors).
    overlap_rule: bool,
    /// Writes what a valid call needs into the arena's buffers (after the case's edit, so
    /// where its pointers are then).
    init: fn(&Args),
    /// Releases what a successful call made.
    cleanup: fn(&Args),
}

fn nothing(_: &Args) {}

// ---------------------------------------------------------------------------------------------
// The fixture's sizes and the shared cases.

const B: usize = 2;
const C: usize = 4;
const S: usize = 5;
/// Elements of a tensor of `SHAPE`.
const NE: usize = B * C * S;
const G: usize = 2;
/// Rows and columns of the row-wise functions; the row stride of the strided `x`.
const R: usize = 3;
const K: usize = 8;
const X_STRIDE: usize = 11;
/// Elements of the elementwise dropout calls (not a multiple of 8).
const N: usize = 37;

fn mask_bytes(bits: usize) -> usize {
    bits.div_ceil(8)
}

fn base() -> Args {
    Args {
        ctx: null_mut(),
        shape: nk_shape {
            batch: B,
            channels: C,
            spatial: S,
            layout: 0,
        },
        groups: G,
        rows: R,
        cols: K,
        n: N,
        count: 0,
        count_b: 0,
        eps: 1e-5,
        momentum: 0.1,
        p: 0.25,
        flags: 0,
        seed: 77,
        offset: 3,
        value: 0,
        tensors: [(0, 0); 4],
        ptrs: Vec::new(),
    }
}

/// A function with the defaults: a context first, the overlap rule, nothing to set up.
fn function(
    name: &'static str,
    bufs: Vec<Buf>,
    base: Args,
    cases: Vec<Case>,
    call: CallFn,
) -> Function {
    Function {
        name,
        bufs,
        base,
        cases,
        call,
        ctx: true,
        overlap_rule: true,
        init: nothing,
        cleanup: nothing,
    }
}

/// Sizes of an `nk_shape` whose element or byte counts overflow, for data of `data`'s size,
/// and unknown layouts.
fn shape_cases(data: Ty) -> Vec<Case> {
    // 2^64 bytes of data exactly: the elements fit in size_t, their bytes do not.
    let bytes_batch = 1usize << (33 - data.size().trailing_zeros());
    vec![
        case("elements overflow", NK_ERR_OVERFLOW, |a| {
            a.shape.batch = 1 << 40;
            a.shape.spatial = 1 << 40;
        }),
        case("bytes overflow", NK_ERR_OVERFLOW, move |a| {
            a.shape.batch = bytes_batch;
            a.shape.channels = 1 << 31;
            a.shape.spatial = 1;
        }),
        case("layout 2", NK_ERR_BAD_ARGUMENT, |a| a.shape.layout = 2),
        case("layout -1", NK_ERR_BAD_ARGUMENT, |a| a.shape.layout = -1),
        case("layout NSC", NK_OK, |a| a.shape.layout = 1),
    ]
}

fn eps_cases() -> Vec<Case> {
    vec![
        case("eps 0", NK_OK, |a| a.eps = 0.0),
        case("eps < 0", NK_ERR_BAD_ARGUMENT, |a| a.eps = -1e-5),
        case("eps NaN", NK_ERR_BAD_ARGUMENT, |a| a.eps = f32::NAN),
        case("eps inf", NK_ERR_BAD_ARGUMENT, |a| a.eps = f32::INFINITY),
    ]
}

fn momentum_cases() -> Vec<Case> {
    vec![
        case("momentum 1", NK_OK, |a| a.momentum = 1.0),
        case("momentum < 0", NK_ERR_BAD_ARGUMENT, |a| a.momentum = -0.01),
        case("momentum > 1", NK_ERR_BAD_ARGUMENT, |a| a.momentum = 1.01),
        case("momentum NaN", NK_ERR_BAD_ARGUMENT, |a| {
            a.momentum = f32::NAN
        }),
    ]
}

/// `p` of the dropout family: in [0, 1] (`gaussian`: [0, 1)).
fn p_cases(gaussian: bool) -> Vec<Case> {
    let one = if gaussian { NK_ERR_BAD_ARGUMENT } else { NK_OK };
    vec![
        case("p 0", NK_OK, |a| a.p = 0.0),
        case("p 1", one, |a| a.p = 1.0),
        case("p < 0", NK_ERR_BAD_ARGUMENT, |a| a.p = -0.01),
        case("p > 1", NK_ERR_BAD_ARGUMENT, |a| a.p = 1.5),
        case("p NaN", NK_ERR_BAD_ARGUMENT, |a| a.p = f32::NAN),
    ]
}

fn beta_cases() -> Vec<Case> {
    vec![
        case("beta 0", NK_OK, |a| a.p = 0.0),
        case("beta < 0", NK_ERR_BAD_ARGUMENT, |a| a.p = -0.5),
        case("beta NaN", NK_ERR_BAD_ARGUMENT, |a| a.p = f32::NAN),
        case("beta inf", NK_ERR_BAD_ARGUMENT, |a| a.p = f32::INFINITY),
    ]
}

fn rows_overflow() -> Case {
    case("rows * cols overflows", NK_ERR_OVERFLOW, |a| {
        a.rows = usize::MAX / 2
    })
}

fn cat(parts: Vec<Vec<Case>>) -> Vec<Case> {
    parts.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------------
// The families. Each takes the function's name, its data type and the closure that calls it.

fn bn_training(name: &'static str, data: Ty, call: CallFn) -> Function {
    let bufs = vec![
        input("x", data, NE),
        output("y", data, NE).replacing(&["x"]),
        input("gamma", Ty::F32, C).optional(),
        input("beta", Ty::F32, C).optional(),
        output("running_mean", Ty::F32, C).pair("running_var"),
        output("running_var", Ty::F32, C).pair("running_mean"),
        output("save_mean", Ty::F32, C).optional(),
        output("save_invstd", Ty::F32, C).optional(),
    ];
    let cases = cat(vec![
        shape_cases(data),
        eps_cases(),
        momentum_cases(),
        vec![
            case("flag RUNNING_VAR_BIASED", NK_OK, |a| a.flags = 1),
            case("flag FUSE_RELU", NK_ERR_BAD_ARGUMENT, |a| a.flags = 2),
            case("unknown flag", NK_ERR_BAD_ARGUMENT, |a| a.flags = 1 << 31),
            case("count 1, unbiased running var", NK_ERR_BAD_SHAPE, |a| {
                (a.shape.batch, a.shape.spatial) = (1, 1)
            }),
            case("batch 0", NK_ERR_BAD_SHAPE, |a| a.shape.batch = 0).without_data(),
        ],
    ]);
    function(name, bufs, base(), cases, call)
}

fn bn_inference(name: &'static str, data: Ty, call: CallFn) -> Function {
    let bufs = vec![
        input("x", data, NE),
        output("y", data, NE).replacing(&["x"]),
        input("gamma", Ty::F32, C).optional(),
        input("beta", Ty::F32, C).optional(),
        input("mean", Ty::F32, C),
        input("var", Ty::F32, C),
    ];
    let cases = cat(vec![
        shape_cases(data),
        eps_cases(),
        vec![
            case("flag FUSE_RELU", NK_OK, |a| a.flags = 2),
            case("flag RUNNING_VAR_BIASED", NK_ERR_BAD_ARGUMENT, |a| {
                a.flags = 1
            }),
            case("unknown flag", NK_ERR_BAD_ARGUMENT, |a| a.flags = 4),
            case("batch 0", NK_OK, |a| a.shape.batch = 0).without_data(),
        ],
    ]);
    function(name, bufs, base(), cases, call)
}

fn moments(name: &'static str, data: Ty, call: CallFn) -> Function {
    let bufs = vec![
        input("x", data, NE),
        output("mean", Ty::F64, C),
        output("m2", Ty::F64, C),
    ];
    let cases = cat(vec![
        shape_cases(data),
        vec![case("batch 0", NK_OK, |a| a.shape.batch = 0).without_data()],
    ]);
    function(name, bufs, base(), cases, call)
}

fn merge(name: &'static str, call: CallFn) -> Function {
    let bufs = vec![
        output("mean_a", Ty::F64, C),
        output("m2_a", Ty::F64, C),
        input("mean_b", Ty::F64, C),
        input("m2_b", Ty::F64, C),
    ];
    let args = Args {
        n: C,
        count: 7,
        count_b: 5,
        ..base()
    };
    let cases = vec![
        case("channels overflow", NK_ERR_OVERFLOW, |a| {
            a.n = usize::MAX / 4
        }),
        case("count_a + count_b overflows", NK_ERR_OVERFLOW, |a| {
            (a.count, a.count_b) = (u64::MAX, 1)
        }),
        case("empty b", NK_OK, |a| a.count_b = 0),
    ];
    Function {
        ctx: false,
        ..function(name, bufs, args, cases, call)
    }
}

fn from_moments(name: &'static str, data: Ty, call: CallFn) -> Function {
    let bufs = vec![
        input("x", data, NE),
        output("y", data, NE).replacing(&["x"]),
        input("gamma", Ty::F32, C).optional(),
        input("beta", Ty::F32, C).optional(),
        input("mean", Ty::F64, C),
        input("m2", Ty::F64, C),
        output("running_mean", Ty::F32, C).pair("running_var"),
        output("running_var", Ty::F32, C).pair("running_mean"),
        output("save_mean", Ty::F32, C).optional(),
        output("save_invstd", Ty::F32, C).optional(),
    ];
    let args = Args {
        count: 3 * (B * S) as u64,
        ..base()
    };
    let cases = cat(vec![
        shape_cases(data),
        eps_cases(),
        momentum_cases(),
        vec![
            case("flag FUSE_RELU", NK_ERR_BAD_ARGUMENT, |a| a.flags = 2),
            case("unknown flag", NK_ERR_BAD_ARGUMENT, |a| a.flags = 8),
        ],
    ]);
    function(name, bufs, args, cases, call)
}

fn fold(name: &'static str, call: CallFn) -> Function {
    let bufs = vec![
        output("weight", Ty::F32, C * 3),
        output("bias", Ty::F32, C),
        input("gamma", Ty::F32, C).optional(),
        input("beta", Ty::F32, C).optional(),
        input("mean", Ty::F32, C),
        input("var", Ty::F32, C),
    ];
    let args = Args {
        rows: C,
        cols: 3,
        ..base()
    };
    let cases = cat(vec![eps_cases(), vec![rows_overflow()]]);
    Function {
        ctx: false,
        ..function(name, bufs, args, cases, call)
    }
}

fn bn_backward(name: &'static str, data: Ty, call: CallFn) -> Function {
    let bufs = vec![
        input("x", data, NE),
        input("dy", data, NE),
        output("dx", data, NE).optional().replacing(&["dy"]),
        input("gamma", Ty::F32, C).optional(),
        input("save_mean", Ty::F32, C),
        input("save_invstd", Ty::F32, C),
        output("dgamma", Ty::F32, C).optional(),
        output("dbeta", Ty::F32, C).optional(),
    ];
    function(name, bufs, base(), shape_cases(data), call)
}

fn bn_reduce(name: &'static str, data: Ty, call: CallFn) -> Function {
    let bufs = vec![
        input("x", data, NE),
        input("dy", data, NE),
        input("save_mean", Ty::F32, C),
        input("save_invstd", Ty::F32, C),
        output("sum_dy", Ty::F64, C),
        output("sum_dy_xhat", Ty::F64, C),
    ];
    function(name, bufs, base(), shape_cases(data), call)
}

fn bn_apply(name: &'static str, data: Ty, call: CallFn) -> Function {
    let bufs = vec![
        input("x", data, NE),
        input("dy", data, NE),
        output("dx", data, NE).replacing(&["dy"]),
        input("gamma", Ty::F32, C).optional(),
        input("save_mean", Ty::F32, C),
        input("save_invstd", Ty::F32, C),
        input("sum_dy", Ty::F64, C),
        input("sum_dy_xhat", Ty::F64, C),
    ];
    let args = Args {
        count: 2 * (B * S) as u64,
        ..base()
    };
    let cases = cat(vec![
        shape_cases(data),
        vec![
            case("count 0", NK_ERR_BAD_SHAPE, |a| a.count = 0),
            case("count below N*S", NK_ERR_BAD_SHAPE, |a| {
                a.count = (B * S) as u64 - 1
            }),
            case("count N*S", NK_OK, |a| a.count = (B * S) as u64),
        ],
    ]);
    function(name, bufs, args, cases, call)
}

fn dropout_mask(name: &'static str, call: CallFn) -> Function {
    let bufs = vec![output("mask", Ty::U8, mask_bytes(N))];
    let cases = cat(vec![
        p_cases(false),
        vec![case("offset past the stream", NK_ERR_OVERFLOW, |a| {
            a.offset = u64::MAX
        })],
    ]);
    function(name, bufs, base(), cases, call)
}

/// Elementwise dropout: `x`/`y` forward (`mask` an optional output), `dy`/`dx` backward
/// (`mask` an optional input); `words` random words per element; `param` the checks of `p`
/// (or `beta`).
fn elementwise(
    name: &'static str,
    data: Ty,
    backward: bool,
    mask: bool,
    words: u64,
    param: Vec<Case>,
    call: CallFn,
) -> Function {
    let (src, dst) = if backward { ("dy", "dx") } else { ("x", "y") };
    let mut bufs = vec![
        input(src, data, N),
        output(dst, data, N).replacing(if backward { &["dy"] } else { &["x"] }),
    ];
    if mask {
        let m = if backward {
            input("mask", Ty::U8, mask_bytes(N))
        } else {
            output("mask", Ty::U8, mask_bytes(N))
        };
        bufs.push(m.optional());
    }
    let last_offset = u64::MAX / words - N as u64 + 1;
    let cases = cat(vec![
        param,
        vec![
            case("n overflows", NK_ERR_OVERFLOW, |a| a.n = usize::MAX / 2),
            case("offset past the stream", NK_ERR_OVERFLOW, move |a| {
                a.offset = last_offset + 1
            }),
            case("offset at the end of the stream", NK_OK, move |a| {
                a.offset = last_offset
            }),
            case("n 0", NK_OK, |a| a.n = 0).without_data(),
        ],
    ]);
    function(name, bufs, base(), cases, call)
}

fn channel_dropout(name: &'static str, data: Ty, backward: bool, call: CallFn) -> Function {
    let (src, dst) = if backward { ("dy", "dx") } else { ("x", "y") };
    let mask = if backward {
        input("mask", Ty::U8, mask_bytes(B * C))
    } else {
        output("mask", Ty::U8, mask_bytes(B * C))
    };
    let bufs = vec![
        input(src, data, NE),
        output(dst, data, NE).replacing(if backward { &["dy"] } else { &["x"] }),
        mask.optional(),
    ];
    let cases = cat(vec![
        shape_cases(data),
        p_cases(false),
        vec![case("offset past the stream", NK_ERR_OVERFLOW, |a| {
            a.offset = u64::MAX - 2
        })],
    ]);
    function(name, bufs, base(), cases, call)
}

fn groupnorm_forward(name: &'static str, data: Ty, instance: bool, call: CallFn) -> Function {
    let saves = if instance { B * C } else { B * G };
    let bufs = vec![
        input("x", data, NE),
        output("y", data, NE).replacing(&["x"]),
        input("gamma", Ty::F32, C).optional(),
        input("beta", Ty::F32, C).optional(),
        output("save_mean", Ty::F32, saves).optional(),
        output("save_invstd", Ty::F32, saves).optional(),
    ];
    let mut cases = cat(vec![shape_cases(data), eps_cases()]);
    if !instance {
        cases.push(case("groups 0", NK_ERR_BAD_SHAPE, |a| a.groups = 0));
        cases.push(case("groups not dividing C", NK_ERR_BAD_SHAPE, |a| {
            a.groups = 3
        }));
    } else {
        cases.push(case("spatial 0", NK_ERR_BAD_SHAPE, |a| a.shape.spatial = 0).without_data());
    }
    function(name, bufs, base(), cases, call)
}

fn groupnorm_backward(name: &'static str, data: Ty, call: CallFn) -> Function {
    let bufs = vec![
        input("x", data, NE),
        input("dy", data, NE),
        output("dx", data, NE).optional().replacing(&["dy"]),
        input("gamma", Ty::F32, C).optional(),
        input("save_mean", Ty::F32, B * G),
        input("save_invstd", Ty::F32, B * G),
        output("dgamma", Ty::F32, C).optional(),
        output("dbeta", Ty::F32, C).optional(),
    ];
    let cases = cat(vec![
        shape_cases(data),
        vec![case("groups not dividing C", NK_ERR_BAD_SHAPE, |a| {
            a.groups = 3
        })],
    ]);
    function(name, bufs, base(), cases, call)
}

fn layernorm_forward(name: &'static str, data: Ty, rms: bool, call: CallFn) -> Function {
    let mut bufs = vec![
        input("x", data, R * K),
        output("y", data, R * K).replacing(&["x"]),
        input("gamma", Ty::F32, K).optional(),
    ];
    if rms {
        bufs.push(output("save_invrms", Ty::F32, R).optional());
    } else {
        bufs.push(input("beta", Ty::F32, K).optional());
        bufs.push(output("save_mean", Ty::F32, R).optional());
        bufs.push(output("save_invstd", Ty::F32, R).optional());
    }
    let cases = cat(vec![
        eps_cases(),
        vec![
            rows_overflow(),
            case("cols 0", NK_OK, |a| a.cols = 0).without_data(),
        ],
    ]);
    function(name, bufs, base(), cases, call)
}

fn layernorm_backward(name: &'static str, data: Ty, rms: bool, call: CallFn) -> Function {
    let mut bufs = vec![
        input("x", data, R * K),
        input("dy", data, R * K),
        output("dx", data, R * K).optional().replacing(&["dy"]),
        input("gamma", Ty::F32, K).optional(),
    ];
    if rms {
        bufs.push(input("save_invrms", Ty::F32, R));
        bufs.push(output("dgamma", Ty::F32, K).optional());
    } else {
        bufs.push(input("save_mean", Ty::F32, R));
        bufs.push(input("save_invstd", Ty::F32, R));
        bufs.push(output("dgamma", Ty::F32, K).optional());
        bufs.push(output("dbeta", Ty::F32, K).optional());
    }
    function(name, bufs, base(), vec![rows_overflow()], call)
}

fn weight_standardize(name: &'static str, call: CallFn) -> Function {
    let bufs = vec![
        input("w", Ty::F32, R * K),
        output("w_out", Ty::F32, R * K).replacing(&["w"]),
    ];
    let cases = cat(vec![eps_cases(), vec![rows_overflow()]]);
    function(name, bufs, base(), cases, call)
}

/// The row functions with strided f32 `x`, packed bf16 `residual` and `sum`, and `y` of f32
/// or (`i8`) int8 with its scales.
fn row_norm(name: &'static str, rms: bool, i8: bool, call: CallFn) -> Function {
    const F32: c_int = 0;
    const BF16: c_int = 1;
    const F16: c_int = 2;
    const I8: c_int = 3;
    let x_len = (R - 1) * X_STRIDE + K;
    let mut bufs = vec![
        input("x", Ty::F32, x_len),
        input("residual", Ty::Half, R * K).optional(),
        input("bias", Ty::F32, K).optional(),
        output("sum", Ty::Half, R * K)
            .optional()
            .replacing(&["x", "residual"]),
        if i8 {
            output("y", Ty::U8, R * K)
        } else {
            output("y", Ty::F32, R * K).replacing(&["x"])
        },
        input("gamma", Ty::F32, K).optional(),
    ];
    if rms {
        bufs.push(output("save_invrms", Ty::F32, R).optional());
    } else {
        bufs.push(input("beta", Ty::F32, K).optional());
        bufs.push(output("save_mean", Ty::F32, R).optional());
        bufs.push(output("save_invstd", Ty::F32, R).optional());
    }
    if i8 {
        bufs.push(output("y_scale", Ty::F32, R));
    }
    let y = if i8 { I8 } else { F32 };
    let args = Args {
        tensors: [(F32, X_STRIDE), (BF16, 0), (BF16, 0), (y, 0)],
        ..base()
    };
    let mut cases = cat(vec![
        eps_cases(),
        vec![
            rows_overflow(),
            case("x stride below cols", NK_ERR_BAD_SHAPE, |a| {
                a.tensors[0].1 = K - 1
            }),
            case("x f16", NK_OK, |a| a.tensors[0].0 = F16),
            case("x i8", NK_ERR_BAD_ARGUMENT, |a| a.tensors[0].0 = I8),
            case("sum i8", NK_ERR_BAD_ARGUMENT, |a| a.tensors[2].0 = I8),
            case("y dtype 4", NK_ERR_BAD_ARGUMENT, |a| a.tensors[3].0 = 4),
            case("residual dtype -1", NK_ERR_BAD_ARGUMENT, |a| {
                a.tensors[1].0 = -1
            }),
            case("cols 0", NK_OK, |a| a.cols = 0).without_data(),
        ],
    ]);
    if i8 {
        cases.push(case("y f32 with y_scale", NK_ERR_BAD_ARGUMENT, |a| {
            a.tensors[3].0 = F32
        }));
    } else {
        cases.push(
            case("y == x, same stride and dtype", NK_OK, |a| {
                a.tensors[3].1 = X_STRIDE;
                let x = a.ptr("x");
                a.set("y", x);
            })
            .touching(&["x", "y"]),
        );
        cases.push(
            case("y_scale with an f32 y", NK_ERR_BAD_ARGUMENT, |a| {
                let y = a.ptr("y");
                a.ptrs.push(("y_scale", y));
            })
            .touching(&["y"]),
        );
    }
    function(name, bufs, args, cases, call)
}

fn context_create(name: &'static str, call: CallFn) -> Function {
    let bufs = vec![output("out", Ty::Ptr, 1)];
    let args = Args { value: 1, ..base() };
    let cases = vec![case(
        "num_threads past the limit",
        NK_ERR_BAD_ARGUMENT,
        |a| a.value = 1 << 20,
    )];
    Function {
        ctx: false,
        overlap_rule: false,
        cleanup: destroy_out,
        ..function(name, bufs, args, cases, call)
    }
}

/// A host executor that runs every task on the calling thread.
unsafe extern "C" fn serial(_: *mut c_void, count: usize, task: nk_task_fn, task_arg: *mut c_void) {
    let task = task.expect("a task");
    for i in 0..count {
        // SAFETY: the contract of nk_executor: normkit's task with its argument.
        unsafe { task(task_arg, i) };
    }
}

/// Writes an executor where the `executor` pointer is (if not NULL): a valid one, or per
/// `a.value` one with `parallel_for` NULL (1) or `concurrency` 0 (2).
fn put_executor(a: &Args) {
    let p = a.ptr::<nk_executor>("executor");
    if p.is_null() {
        return;
    }
    let executor = nk_executor {
        parallel_for: if a.value == 1 { None } else { Some(serial) },
        user: null_mut(),
        concurrency: if a.value == 2 { 0 } else { 1 },
    };
    // SAFETY: inside the arena buffer of the executor or moved by a few bytes into its gap.
    unsafe { p.write_unaligned(executor) };
}

fn destroy_out(a: &Args) {
    // SAFETY: `out` holds the context the successful call made.
    unsafe { nk_context_destroy(a.ptr::<*mut nk_context>("out").read()) };
}

fn context_create_with_executor(name: &'static str, call: CallFn) -> Function {
    let bufs = vec![
        input("executor", Ty::Executor, 1),
        output("out", Ty::Ptr, 1),
    ];
    let cases = vec![
        case("parallel_for NULL", NK_ERR_NULL_POINTER, |a| a.value = 1),
        case("concurrency 0", NK_ERR_BAD_ARGUMENT, |a| a.value = 2),
    ];
    Function {
        ctx: false,
        overlap_rule: false,
        init: put_executor,
        cleanup: destroy_out,
        ..function(name, bufs, base(), cases, call)
    }
}

fn context_set_isa(name: &'static str, call: CallFn) -> Function {
    let unsupported = normkit::Isa::ALL
        .into_iter()
        .position(|isa| !isa.is_supported());
    let mut cases = vec![
        case("NULL context", NK_ERR_NULL_POINTER, |a| a.ctx = null_mut()),
        case("isa 99", NK_ERR_BAD_ARGUMENT, |a| a.value = 99),
        case("isa -1", NK_ERR_BAD_ARGUMENT, |a| a.value = usize::MAX),
        case("NULL context, isa 99", NK_ERR_NULL_POINTER, |a| {
            a.ctx = null_mut();
            a.value = 99;
        }),
    ];
    if let Some(i) = unsupported {
        // nk_isa numbers Isa::ALL from 1.
        cases.push(case(
            "an ISA this CPU lacks",
            NK_ERR_UNSUPPORTED,
            move |a| a.value = i + 1,
        ));
    }
    Function {
        // The context is required here: the valid call names one, the cases take it away.
        base: Args {
            ctx: own_context(),
            ..base()
        },
        ctx: false,
        overlap_rule: false,
        ..function(name, Vec::new(), base(), cases, call)
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

/// Calls an `nk_*` function with arguments taken from `Args` (a closure `fn(&Args) ->
/// nk_status`); `twins!` makes the float, bf16 and f16 entries of a family at once.
macro_rules! call {
    ($a:ident => $f:ident($($arg:expr),* $(,)?)) => {
        (|$a: &Args| {
            // SAFETY: every pointer is NULL, inside the arena with room for the extent the
            // table gives it, or moved on purpose (misaligned, overlapping, extents too large)
            // to provoke an error the call must find before it touches memory; even a call
            // that missed one stays inside the arena (see `run`).
            unsafe { $f($($arg),*) }
        }) as CallFn
    };
}

macro_rules! twins {
    (
        $family:ident($($pre:expr),*),
        [$f32:ident, $bf16:ident, $f16:ident],
        $a:ident => $($rest:tt)*
    ) => {
        vec![
            $family(stringify!($f32), Ty::F32, $($pre,)* call!($a => $f32($($rest)*))),
            $family(stringify!($bf16), Ty::Half, $($pre,)* call!($a => $bf16($($rest)*))),
            $family(stringify!($f16), Ty::Half, $($pre,)* call!($a => $f16($($rest)*))),
        ]
    };
}

/// Every operation of the header that returns an `nk_status`.
fn table() -> Vec<Function> {
    let mut t = Vec::new();
    t.extend(twins!(
        bn_training(),
        [
            nk_batchnorm_forward_training,
            nk_batchnorm_forward_training_bf16,
            nk_batchnorm_forward_training_f16
        ],
        a =>
        a.ctx,
        a.shape,
        a.ptr("x"),
        a.ptr("y"),
        a.ptr("gamma"),
        a.ptr("beta"),
        a.eps,
        a.momentum,
        a.flags,
        a.ptr("running_mean"),
        a.ptr("running_var"),
        a.ptr("save_mean"),
        a.ptr("save_invstd")
    ));
    t.extend(twins!(
        bn_inference(),
        [
            nk_batchnorm_forward_inference,
            nk_batchnorm_forward_inference_bf16,
            nk_batchnorm_forward_inference_f16
        ],
        a =>
        a.ctx,
        a.shape,
        a.ptr("x"),
        a.ptr("y"),
        a.ptr("gamma"),
        a.ptr("beta"),
        a.ptr("mean"),
        a.ptr("var"),
        a.eps,
        a.flags
    ));
    t.extend(twins!(
        moments(),
        [nk_moments, nk_moments_bf16, nk_moments_f16],
        a =>
        a.ctx,
        a.shape,
        a.ptr("x"),
        a.ptr("mean"),
        a.ptr("m2")
    ));
    t.push(merge(
        "nk_moments_merge",
        call!(a => nk_moments_merge(
            a.n,
            a.count,
            a.ptr("mean_a"),
            a.ptr("m2_a"),
            a.count_b,
            a.ptr("mean_b"),
            a.ptr("m2_b")
        )),
    ));
    t.extend(twins!(
        from_moments(),
        [
            nk_batchnorm_forward_from_moments,
            nk_batchnorm_forward_from_moments_bf16,
            nk_batchnorm_forward_from_moments_f16
        ],
        a =>
        a.ctx,
        a.shape,
        a.ptr("x"),
        a.ptr("y"),
        a.ptr("gamma"),
        a.ptr("beta"),
        a.count,
        a.ptr("mean"),
        a.ptr("m2"),
        a.eps,
        a.momentum,
        a.flags,
        a.ptr("running_mean"),
        a.ptr("running_var"),
        a.ptr("save_mean"),
        a.ptr("save_invstd")
    ));
    t.push(fold(
        "nk_batchnorm_fold",
        call!(a => nk_batchnorm_fold(
            a.rows,
            a.cols,
            a.ptr("weight"),
            a.ptr("bias"),
            a.ptr("gamma"),
            a.ptr("beta"),
            a.ptr("mean"),
            a.ptr("var"),
            a.eps
        )),
    ));
    t.extend(twins!(
        bn_backward(),
        [
            nk_batchnorm_backward,
            nk_batchnorm_backward_bf16,
            nk_batchnorm_backward_f16
        ],
        a =>
        a.ctx,
        a.shape,
        a.ptr("x"),
        a.ptr("dy"),
        a.ptr("dx"),
        a.ptr("gamma"),
        a.ptr("save_mean"),
        a.ptr("save_invstd"),
        a.ptr("dgamma"),
        a.ptr("dbeta")
    ));
    t.extend(twins!(
        bn_reduce(),
        [
            nk_batchnorm_backward_reduce,
            nk_batchnorm_backward_reduce_bf16,
            nk_batchnorm_backward_reduce_f16
        ],
        a =>
        a.ctx,
        a.shape,
        a.ptr("x"),
        a.ptr("dy"),
        a.ptr("save_mean"),
        a.ptr("save_invstd"),
        a.ptr("sum_dy"),
        a.ptr("sum_dy_xhat")
    ));
    t.extend(twins!(
        bn_apply(),
        [
            nk_batchnorm_backward_apply,
            nk_batchnorm_backward_apply_bf16,
            nk_batchnorm_backward_apply_f16
        ],
        a =>
        a.ctx,
        a.shape,
        a.ptr("x"),
        a.ptr("dy"),
        a.ptr("dx"),
        a.ptr("gamma"),
        a.ptr("save_mean"),
        a.ptr("save_invstd"),
        a.count,
        a.ptr("sum_dy"),
        a.ptr("sum_dy_xhat")
    ));
    t.push(dropout_mask(
        "nk_dropout_mask",
        call!(a => nk_dropout_mask(a.ctx, a.n, a.p, a.seed, a.offset, a.ptr("mask"))),
    ));
    // Elementwise dropout: (backward, mask, words per element, checks of the parameter).
    t.extend(twins!(
        elementwise(false, true, 1, p_cases(false)),
        [nk_dropout_forward, nk_dropout_forward_bf16, nk_dropout_forward_f16],
        a =>
        a.ctx, a.n, a.ptr("x"), a.ptr("y"), a.p, a.seed, a.offset, a.ptr("mask")
    ));
    t.extend(twins!(
        elementwise(true, true, 1, p_cases(false)),
        [nk_dropout_backward, nk_dropout_backward_bf16, nk_dropout_backward_f16],
        a =>
        a.ctx, a.n, a.ptr("dy"), a.ptr("dx"), a.p, a.seed, a.offset, a.ptr("mask")
    ));
    t.extend(twins!(
        elementwise(false, true, 1, p_cases(false)),
        [
            nk_alpha_dropout_forward,
            nk_alpha_dropout_forward_bf16,
            nk_alpha_dropout_forward_f16
        ],
        a =>
        a.ctx, a.n, a.ptr("x"), a.ptr("y"), a.p, a.seed, a.offset, a.ptr("mask")
    ));
    t.extend(twins!(
        elementwise(true, true, 1, p_cases(false)),
        [
            nk_alpha_dropout_backward,
            nk_alpha_dropout_backward_bf16,
            nk_alpha_dropout_backward_f16
        ],
        a =>
        a.ctx, a.n, a.ptr("dy"), a.ptr("dx"), a.p, a.seed, a.offset, a.ptr("mask")
    ));
    t.extend(twins!(
        elementwise(false, false, 2, p_cases(true)),
        [
            nk_gaussian_dropout_forward,
            nk_gaussian_dropout_forward_bf16,
            nk_gaussian_dropout_forward_f16
        ],
        a =>
        a.ctx, a.n, a.ptr("x"), a.ptr("y"), a.p, a.seed, a.offset
    ));
    t.extend(twins!(
        elementwise(true, false, 2, p_cases(true)),
        [
            nk_gaussian_dropout_backward,
            nk_gaussian_dropout_backward_bf16,
            nk_gaussian_dropout_backward_f16
        ],
        a =>
        a.ctx, a.n, a.ptr("dy"), a.ptr("dx"), a.p, a.seed, a.offset
    ));
    t.extend(twins!(
        elementwise(false, false, 1, beta_cases()),
        [
            nk_uniform_dropout_forward,
            nk_uniform_dropout_forward_bf16,
            nk_uniform_dropout_forward_f16
        ],
        a =>
        a.ctx, a.n, a.ptr("x"), a.ptr("y"), a.p, a.seed, a.offset
    ));
    t.extend(twins!(
        elementwise(true, false, 1, beta_cases()),
        [
            nk_uniform_dropout_backward,
            nk_uniform_dropout_backward_bf16,
            nk_uniform_dropout_backward_f16
        ],
        a =>
        a.ctx, a.n, a.ptr("dy"), a.ptr("dx"), a.p, a.seed, a.offset
    ));
    t.extend(twins!(
        channel_dropout(false),
        [
            nk_channel_dropout_forward,
            nk_channel_dropout_forward_bf16,
            nk_channel_dropout_forward_f16
        ],
        a =>
        a.ctx, a.shape, a.ptr("x"), a.ptr("y"), a.p, a.seed, a.offset, a.ptr("mask")
    ));
    t.extend(twins!(
        channel_dropout(true),
        [
            nk_channel_dropout_backward,
            nk_channel_dropout_backward_bf16,
            nk_channel_dropout_backward_f16
        ],
        a =>
        a.ctx, a.shape, a.ptr("dy"), a.ptr("dx"), a.p, a.seed, a.offset, a.ptr("mask")
    ));
    t.extend(twins!(
        groupnorm_forward(false),
        [
            nk_groupnorm_forward,
            nk_groupnorm_forward_bf16,
            nk_groupnorm_forward_f16
        ],
        a =>
        a.ctx,
        a.shape,
        a.groups,
        a.ptr("x"),
        a.ptr("y"),
        a.ptr("gamma"),
        a.ptr("beta"),
        a.eps,
        a.ptr("save_mean"),
        a.ptr("save_invstd")
    ));
    t.extend(twins!(
        groupnorm_backward(),
        [
            nk_groupnorm_backward,
            nk_groupnorm_backward_bf16,
            nk_groupnorm_backward_f16
        ],
        a =>
        a.ctx,
        a.shape,
        a.groups,
        a.ptr("x"),
        a.ptr("dy"),
        a.ptr("dx"),
        a.ptr("gamma"),
        a.ptr("save_mean"),
        a.ptr("save_invstd"),
        a.ptr("dgamma"),
        a.ptr("dbeta")
    ));
    t.extend(twins!(
        groupnorm_forward(true),
        [
            nk_instancenorm_forward,
            nk_instancenorm_forward_bf16,
            nk_instancenorm_forward_f16
        ],
        a =>
        a.ctx,
        a.shape,
        a.ptr("x"),
        a.ptr("y"),
        a.ptr("gamma"),
        a.ptr("beta"),
        a.eps,
        a.ptr("save_mean"),
        a.ptr("save_invstd")
    ));
    t.extend(twins!(
        layernorm_forward(false),
        [
            nk_layernorm_forward,
            nk_layernorm_forward_bf16,
            nk_layernorm_forward_f16
        ],
        a =>
        a.ctx,
        a.rows,
        a.cols,
        a.ptr("x"),
        a.ptr("y"),
        a.ptr("gamma"),
        a.ptr("beta"),
        a.eps,
        a.ptr("save_mean"),
        a.ptr("save_invstd")
    ));
    t.extend(twins!(
        layernorm_backward(false),
        [
            nk_layernorm_backward,
            nk_layernorm_backward_bf16,
            nk_layernorm_backward_f16
        ],
        a =>
        a.ctx,
        a.rows,
        a.cols,
        a.ptr("x"),
        a.ptr("dy"),
        a.ptr("dx"),
        a.ptr("gamma"),
        a.ptr("save_mean"),
        a.ptr("save_invstd"),
        a.ptr("dgamma"),
        a.ptr("dbeta")
    ));
    t.extend(twins!(
        layernorm_forward(true),
        [nk_rmsnorm_forward, nk_rmsnorm_forward_bf16, nk_rmsnorm_forward_f16],
        a =>
        a.ctx,
        a.rows,
        a.cols,
        a.ptr("x"),
        a.ptr("y"),
        a.ptr("gamma"),
        a.eps,
        a.ptr("save_invrms")
    ));
    t.extend(twins!(
        layernorm_backward(true),
        [
            nk_rmsnorm_backward,
            nk_rmsnorm_backward_bf16,
            nk_rmsnorm_backward_f16
        ],
        a =>
        a.ctx,
        a.rows,
        a.cols,
        a.ptr("x"),
        a.ptr("dy"),
        a.ptr("dx"),
        a.ptr("gamma"),
        a.ptr("save_invrms"),
        a.ptr("dgamma")
    ));
    t.push(weight_standardize(
        "nk_weight_standardize",
        call!(a => nk_weight_standardize(a.ctx, a.rows, a.cols, a.ptr("w"), a.ptr("w_out"), a.eps)),
    ));
    for i8 in [false, true] {
        t.push(row_norm(
            if i8 {
                "nk_layernorm_forward_rows (i8 y)"
            } else {
                "nk_layernorm_forward_rows"
            },
            false,
            i8,
            call!(a => nk_layernorm_forward_rows(
                a.ctx,
                a.rows,
                a.cols,
                a.tensor("x", 0),
                a.tensor("residual", 1),
                a.ptr("bias"),
                a.tensor("sum", 2),
                a.tensor("y", 3),
                a.ptr("gamma"),
                a.ptr("beta"),
                a.eps,
                a.ptr("save_mean"),
                a.ptr("save_invstd"),
                optional_ptr(a, "y_scale")
            )),
        ));
        t.push(row_norm(
            if i8 {
                "nk_rmsnorm_forward_rows (i8 y)"
            } else {
                "nk_rmsnorm_forward_rows"
            },
            true,
            i8,
            call!(a => nk_rmsnorm_forward_rows(
                a.ctx,
                a.rows,
                a.cols,
                a.tensor("x", 0),
                a.tensor("residual", 1),
                a.ptr("bias"),
                a.tensor("sum", 2),
                a.tensor("y", 3),
                a.ptr("gamma"),
                a.eps,
                a.ptr("save_invrms"),
                optional_ptr(a, "y_scale")
            )),
        ));
    }
    t.push(context_create(
        "nk_context_create",
        call!(a => nk_context_create(a.value, a.ptr("out"))),
    ));
    t.push(context_create_with_executor(
        "nk_context_create_with_executor",
        call!(a => nk_context_create_with_executor(a.ptr("executor"), a.ptr("out"))),
    ));
    t.push(context_set_isa(
        "nk_context_set_isa",
        call!(a => nk_context_set_isa(a.ctx, a.value as c_int)),
    ));
    t
}

/// The pointer `name` if the call has that buffer, else NULL.
fn optional_ptr<T>(a: &Args, name: &str) -> *mut T {
    a.ptrs
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(null_mut(), |p| p.1.cast())
}

/// The exported functions outside the status contract: they return no `nk_status` (their
/// behaviour is checked by the tests of `ffi_contract.rs` and `c_api.rs`).
const NO_STATUS: &[&str] = &[
    "nk_philox4x32_10",
    "nk_version",
    "nk_status_string",
    "nk_last_error_message",
    "nk_context_destroy",
    "nk_context_isa",
];

/// A context of the test's own (two threads), made once.
fn own_context() -> *mut nk_context {
    static CTX: OnceLock<usize> = OnceLock::new();
    *CTX.get_or_init(|| {
        let mut ctx = null_mut();
        // SAFETY: `ctx` is valid for writing a pointer.
        assert_eq!(unsafe { nk_context_create(2, &mut ctx) }, NK_OK);
        ctx as usize
    }) as *mut nk_context
}

// ---------------------------------------------------------------------------------------------
// Deriving the cases and running them.

/// Where `moved` (aligned for its type) overlaps `fixed` partly, as a byte offset from `fixed`;
/// `None` if no aligned position does (both too small).
fn partial_overlap(moved: &Buf, fixed: &Buf) -> Option<isize> {
    let step = moved.ty.align();
    if step < fixed.bytes() {
        Some(step as isize)
    } else if step < moved.bytes() {
        Some(-(step as isize))
    } else {
        None
    }
}

/// Whether output `o` may be exactly `b`: `b` is an input it replaces, of the same extent.
fn may_replace(o: &Buf, b: &Buf) -> bool {
    o.replaces.contains(&b.name) && o.bytes() == b.bytes()
}

/// Every case of `f`: the derived ones, then its own, then the combinations of classes.
fn cases(f: &Function) -> Vec<Case> {
    let mut all = vec![case("valid", NK_OK, |_| {})];
    if f.ctx {
        all.push(case("own context", NK_OK, |a| a.ctx = own_context()));
    }
    let mut nulls = Vec::new();
    let mut misaligned = Vec::new();
    let mut overlaps = Vec::new();
    for b in &f.bufs {
        let name = b.name;
        let null = move |a: &mut Args| a.set(name, null_mut());
        match b.need {
            Need::Required => nulls.push(
                Case {
                    names: vec![name],
                    ..case(format!("{name} NULL"), NK_ERR_NULL_POINTER, null)
                }
                .touching(&[name]),
            ),
            Need::Optional => all.push(case(format!("{name} NULL"), NK_OK, null).touching(&[name])),
            Need::Pair(with) => {
                nulls.push(
                    Case {
                        names: vec![name],
                        ..case(format!("{name} NULL alone"), NK_ERR_NULL_POINTER, null)
                    }
                    .touching(&[name]),
                );
                all.push(
                    case(format!("{name} and {with} NULL"), NK_OK, move |a| {
                        a.set(name, null_mut());
                        a.set(with, null_mut());
                    })
                    .touching(&[name, with]),
                );
            }
        }
        for by in [1, 2, 4, 8].into_iter().filter(|&by| by < b.ty.align()) {
            misaligned.push(
                Case {
                    names: vec![name],
                    ..case(
                        format!("{name} + {by} bytes"),
                        NK_ERR_MISALIGNED,
                        move |a| {
                            let p = a.ptr::<u8>(name);
                            a.set(name, p.wrapping_add(by));
                        },
                    )
                }
                .touching(&[name]),
            );
        }
    }
    if f.overlap_rule {
        for o in f.bufs.iter().filter(|b| b.writes) {
            for b in f.bufs.iter().filter(|b| b.name != o.name) {
                let (on, bn) = (o.name, b.name);
                let onto = move |by: isize| {
                    move |a: &mut Args| {
                        let p = a.ptr::<u8>(bn).wrapping_offset(by);
                        a.set(on, p);
                    }
                };
                let exact = if may_replace(o, b) {
                    NK_OK
                } else {
                    NK_ERR_ALIAS
                };
                let c = case(format!("{on} == {bn}"), exact, onto(0)).touching(&[on, bn]);
                if exact == NK_OK {
                    all.push(c);
                } else {
                    overlaps.push(Case {
                        names: vec![on, bn],
                        ..c
                    });
                }
                if let Some(by) = partial_overlap(o, b) {
                    overlaps.push(Case {
                        names: vec![on, bn],
                        ..case(format!("{on} = {bn} {by:+} bytes"), NK_ERR_ALIAS, onto(by))
                            .touching(&[on, bn])
                    });
                }
                if o.ty.align() > 1 {
                    // Misaligned and overlapping: alignment is checked first.
                    misaligned.push(Case {
                        names: vec![on],
                        ..case(format!("{on} = {bn} + 1 byte"), NK_ERR_MISALIGNED, onto(1))
                            .touching(&[on, bn])
                    });
                }
                if !b.writes
                    && let Some(by) = partial_overlap(b, o)
                {
                    overlaps.push(Case {
                        names: vec![on, bn],
                        ..case(
                            format!("{bn} = {on} {by:+} bytes"),
                            NK_ERR_ALIAS,
                            move |a| {
                                let p = a.ptr::<u8>(on).wrapping_offset(by);
                                a.set(bn, p);
                            },
                        )
                        .touching(&[on, bn])
                    });
                }
            }
        }
    }
    // The combinations: a representative of one class with one of each later class.
    let mut combined = Vec::new();
    let first_free = |list: &[Case], taken: &[&'static str]| -> Option<usize> {
        list.iter()
            .position(|c| c.touches.iter().all(|t| !taken.contains(t)))
    };
    let checks: Vec<&Case> = f
        .cases
        .iter()
        .filter(|c| c.want != NK_OK && c.touches.is_empty())
        .collect();
    if let Some(null) = nulls.first() {
        for c in checks.iter().filter(|c| c.keeps_data) {
            combined.push(combine(null, c, NK_ERR_NULL_POINTER));
        }
        if let Some(i) = first_free(&misaligned, &null.touches) {
            combined.push(combine(null, &misaligned[i], NK_ERR_NULL_POINTER));
        }
        if let Some(i) = first_free(&overlaps, &null.touches) {
            combined.push(combine(null, &overlaps[i], NK_ERR_NULL_POINTER));
        }
    }
    for check in &checks {
        if let Some(m) = misaligned.first() {
            combined.push(combine(check, m, check.want));
        }
        if let Some(o) = overlaps.first() {
            combined.push(combine(check, o, check.want));
        }
    }
    if let Some(m) = misaligned.first()
        && let Some(i) = first_free(&overlaps, &m.touches)
    {
        combined.push(combine(m, &overlaps[i], NK_ERR_MISALIGNED));
    }
    all.extend(f.cases.iter().cloned());
    all.extend(nulls);
    all.extend(misaligned);
    all.extend(overlaps);
    all.extend(combined);
    all
}

/// `first` and `then` together (applied in that order), expecting `want`.
fn combine(first: &Case, then: &Case, want: nk_status) -> Case {
    let (e1, e2) = (first.edit.clone(), then.edit.clone());
    let mut touches = first.touches.clone();
    touches.extend(&then.touches);
    Case {
        what: format!("{} + {}", first.what, then.what),
        want,
        edit: Rc::new(move |a| {
            e1(a);
            e2(a);
        }),
        touches,
        names: if want == first.want {
            first.names.clone()
        } else {
            then.names.clone()
        },
        keeps_data: first.keeps_data && then.keeps_data,
    }
}

/// Runs `c` on a fresh arena holding `f`'s buffers; the failures found, if any.
fn run_case(f: &Function, c: &Case) -> Option<String> {
    // Each buffer 64-byte aligned with a gap after it, then room for the largest buffer moved
    // past the last one: a call that missed an error still writes inside the arena.
    let largest = f.bufs.iter().map(Buf::bytes).max().unwrap_or(0);
    let total: usize = f
        .bufs
        .iter()
        .map(|b| b.bytes().next_multiple_of(64) + GAP)
        .sum();
    let mut arena = Arena::new(GAP + total + largest.next_multiple_of(64) + GAP);
    let mut args = f.base.clone();
    for b in &f.bufs {
        args.ptrs.push((b.name, arena.alloc::<u8>(b.bytes())));
    }
    (c.edit)(&mut args);
    (f.init)(&args);
    let before = arena.bytes();
    let got = (f.call)(&args);
    let what = format!("{}: {}", f.name, c.what);
    if got != c.want {
        if got == NK_OK {
            (f.cleanup)(&args);
        }
        return Some(format!(
            "{what}: {got:?}, expected {:?} ({})",
            c.want,
            last_error()
        ));
    }
    if got == NK_OK {
        (f.cleanup)(&args);
        return None;
    }
    let message = last_error();
    let mut failures = Vec::new();
    if let Some(i) = arena.changed_since(&before) {
        failures.push(format!("{what}: {got:?} but byte {i} of the arena changed"));
    }
    if message.is_empty() {
        failures.push(format!("{what}: {got:?} with an empty last error message"));
    }
    for name in &c.names {
        if !message.contains(name) {
            failures.push(format!(
                "{what}: the message {message:?} does not name {name}"
            ));
        }
    }
    (!failures.is_empty()).then(|| failures.join("\n"))
}

fn check_functions(select: impl Fn(&Function) -> bool) {
    let mut failures = Vec::new();
    let (mut functions, mut count) = (0, 0);
    for f in table().iter().filter(|f| select(f)) {
        functions += 1;
        for c in cases(f) {
            count += 1;
            failures.extend(run_case(f, &c));
        }
    }
    assert!(functions > 0, "no function selected");
    println!("{count} cases of {functions} functions");
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn contract_of_the_batch_norm_functions() {
    check_functions(|f| f.name.starts_with("nk_batchnorm") || f.name.starts_with("nk_moments"));
}

#[test]
fn contract_of_the_dropout_functions() {
    check_functions(|f| f.name.contains("dropout"));
}

#[test]
fn contract_of_the_group_and_instance_norm_functions() {
    check_functions(|f| {
        f.name.starts_with("nk_groupnorm") || f.name.starts_with("nk_instancenorm")
    });
}

#[test]
fn contract_of_the_layer_and_rms_norm_functions() {
    check_functions(|f| {
        f.name.starts_with("nk_layernorm")
            || f.name.starts_with("nk_rmsnorm")
            || f.name == "nk_weight_standardize"
    });
}

#[test]
fn contract_of_the_context_functions() {
    check_functions(|f| f.name.starts_with("nk_context"));
}

/// The table and [`NO_STATUS`] name every function of `include/normkit.h`, and nothing else.
#[test]
fn every_exported_function_is_in_the_table() {
    let header = include_str!("../../include/normkit.h");
    let mut declared: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with("//") && !l.starts_with(' '))
        .filter_map(|l| {
            let name = l.split('(').next()?.rsplit([' ', '*']).next()?;
            (name.starts_with("nk_") && l.contains('(')).then_some(name)
        })
        .collect();
    declared.sort();
    declared.dedup();
    let t = table();
    let mut covered: Vec<&str> = t
        .iter()
        .map(|f| f.name.split(' ').next().unwrap())
        .chain(NO_STATUS.iter().copied())
        .collect();
    covered.sort();
    covered.dedup();
    assert!(
        declared.len() > 80,
        "found only {} declarations",
        declared.len()
    );
    assert_eq!(declared, covered, "header declarations vs the table");
}
