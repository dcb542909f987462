//! The error contract of the C functions, called from Rust: every status code each function can
//! return, provoked on purpose; the precedence order when several errors apply; nothing written
//! on error (byte for byte); the last error message; the library and context functions; and
//! zero-element calls with NULL data.
//!
//! The batch-norm functions have hand-written cases below; `every_function` derives the NULL,
//! alignment, overlap, argument and precedence cases of every exported function from one table.
//!
//! Every buffer of a call lives in one arena filled with a sentinel pattern, so "nothing written"
//! is checked over all of them at once, inputs included, and misaligned or overlapping pointers
//! stay inside memory the test owns.

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::arena::{Arena, read, shift, write};
use common::data::Gen;
use common::reference as r;
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use normkit::{Isa, Layout, Shape};
use std::ffi::CStr;
use std::ptr::{null, null_mut};

#[path = "ffi_contract/every_function.rs"]
mod every_function;

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated (the contract).
    unsafe { CStr::from_ptr(nk_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------------------------
// The fixture: valid arguments for every batch-norm function.

const B: usize = 2;
const C: usize = 3;
const S: usize = 5;
const N: usize = B * C * S;
const COUNT: u64 = (B * S) as u64;
const FAN: usize = 4;
const NCS: nk_layout_value = 0;
const NSC: nk_layout_value = 1;

struct Fx {
    arena: Arena,
    x: *mut f32,
    y: *mut f32,
    gamma: *mut f32,
    beta: *mut f32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
    /// f32 statistics of inference and fold.
    mean: *mut f32,
    var: *mut f32,
    /// f64 moments: `a` of a merge, the statistics of a forward from moments, the outputs of
    /// moments.
    mean_a: *mut f64,
    m2_a: *mut f64,
    mean_b: *mut f64,
    m2_b: *mut f64,
    weight: *mut f32,
    bias: *mut f32,
}

impl Fx {
    fn new(seed: u64) -> Fx {
        let mut arena = Arena::new(8192);
        let mut g = Gen::new(seed);
        let fx = Fx {
            x: arena.alloc(N),
            y: arena.alloc(N),
            gamma: arena.alloc(C),
            beta: arena.alloc(C),
            running_mean: arena.alloc(C),
            running_var: arena.alloc(C),
            save_mean: arena.alloc(C),
            save_invstd: arena.alloc(C),
            mean: arena.alloc(C),
            var: arena.alloc(C),
            mean_a: arena.alloc(C),
            m2_a: arena.alloc(C),
            mean_b: arena.alloc(C),
            m2_b: arena.alloc(C),
            weight: arena.alloc(C * FAN),
            bias: arena.alloc(C),
            arena,
        };
        // Inputs (and in-out buffers) hold valid values; outputs keep the arena's pattern.
        write(fx.x, &g.normals(N, 1.0, 2.0));
        write(fx.gamma, &g.uniforms(C, 0.5, 2.0));
        write(fx.beta, &g.uniforms(C, -1.0, 1.0));
        write(fx.running_mean, &g.normals(C, 0.0, 1.0));
        write(fx.running_var, &g.uniforms(C, 0.5, 2.0));
        write(fx.mean, &g.normals(C, 1.0, 1.0));
        write(fx.var, &g.uniforms(C, 0.5, 4.0));
        let moments = |g: &mut Gen| -> (Vec<f64>, Vec<f64>) {
            let mean = (0..C).map(|_| g.range(-2.0, 2.0)).collect();
            let m2 = (0..C).map(|_| g.range(1.0, 5.0) * COUNT as f64).collect();
            (mean, m2)
        };
        let (ma, m2a) = moments(&mut g);
        let (mb, m2b) = moments(&mut g);
        write(fx.mean_a, &ma);
        write(fx.m2_a, &m2a);
        write(fx.mean_b, &mb);
        write(fx.m2_b, &m2b);
        write(fx.weight, &g.normals(C * FAN, 0.0, 0.5));
        write(fx.bias, &g.normals(C, 0.0, 1.0));
        fx
    }

    fn shape() -> nk_shape {
        nk_shape {
            batch: B,
            channels: C,
            spatial: S,
            layout: NCS,
        }
    }

    fn training(&self) -> Training {
        Training {
            ctx: null_mut(),
            shape: Fx::shape(),
            x: self.x,
            y: self.y,
            gamma: self.gamma,
            beta: self.beta,
            eps: 1e-5,
            momentum: 0.1,
            flags: 0,
            running_mean: self.running_mean,
            running_var: self.running_var,
            save_mean: self.save_mean,
            save_invstd: self.save_invstd,
        }
    }

    fn inference(&self) -> Inference {
        Inference {
            ctx: null_mut(),
            shape: Fx::shape(),
            x: self.x,
            y: self.y,
            gamma: self.gamma,
            beta: self.beta,
            mean: self.mean,
            var: self.var,
            eps: 1e-5,
            flags: 0,
        }
    }

    fn moments(&self) -> Moments {
        Moments {
            ctx: null_mut(),
            shape: Fx::shape(),
            x: self.x,
            mean: self.mean_a,
            m2: self.m2_a,
        }
    }

    fn merge(&self) -> Merge {
        Merge {
            channels: C,
            count_a: 7,
            mean_a: self.mean_a,
            m2_a: self.m2_a,
            count_b: 5,
            mean_b: self.mean_b,
            m2_b: self.m2_b,
        }
    }

    fn forward_from_moments(&self) -> FromMoments {
        FromMoments {
            ctx: null_mut(),
            shape: Fx::shape(),
            x: self.x,
            y: self.y,
            gamma: self.gamma,
            beta: self.beta,
            count: 3 * COUNT,
            mean: self.mean_a,
            m2: self.m2_a,
            eps: 1e-5,
            momentum: 0.1,
            flags: 0,
            running_mean: self.running_mean,
            running_var: self.running_var,
            save_mean: self.save_mean,
            save_invstd: self.save_invstd,
        }
    }

    fn fold(&self) -> Fold {
        Fold {
            c_out: C,
            fan_in: FAN,
            weight: self.weight,
            bias: self.bias,
            gamma: self.gamma,
            beta: self.beta,
            mean: self.mean,
            var: self.var,
            eps: 1e-5,
        }
    }
}

/// One C call with all its arguments.
trait Call {
    fn call(&self) -> nk_status;
}

#[derive(Clone, Copy)]
struct Training {
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    momentum: f32,
    flags: u32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
}

impl Call for Training {
    fn call(&self) -> nk_status {
        // SAFETY: every pointer is NULL or inside the arena with room for its extent.
        unsafe {
            nk_batchnorm_forward_training(
                self.ctx,
                self.shape,
                self.x,
                self.y,
                self.gamma,
                self.beta,
                self.eps,
                self.momentum,
                self.flags,
                self.running_mean,
                self.running_var,
                self.save_mean,
                self.save_invstd,
            )
        }
    }
}

#[derive(Clone, Copy)]
struct Inference {
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    mean: *const f32,
    var: *const f32,
    eps: f32,
    flags: u32,
}

impl Call for Inference {
    fn call(&self) -> nk_status {
        // SAFETY: as for Training.
        unsafe {
            nk_batchnorm_forward_inference(
                self.ctx, self.shape, self.x, self.y, self.gamma, self.beta, self.mean, self.var,
                self.eps, self.flags,
            )
        }
    }
}

#[derive(Clone, Copy)]
struct Moments {
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    mean: *mut f64,
    m2: *mut f64,
}

impl Call for Moments {
    fn call(&self) -> nk_status {
        // SAFETY: as for Training.
        unsafe { nk_moments(self.ctx, self.shape, self.x, self.mean, self.m2) }
    }
}

#[derive(Clone, Copy)]
struct Merge {
    channels: usize,
    count_a: u64,
    mean_a: *mut f64,
    m2_a: *mut f64,
    count_b: u64,
    mean_b: *const f64,
    m2_b: *const f64,
}

impl Call for Merge {
    fn call(&self) -> nk_status {
        // SAFETY: as for Training.
        unsafe {
            nk_moments_merge(
                self.channels,
                self.count_a,
                self.mean_a,
                self.m2_a,
                self.count_b,
                self.mean_b,
                self.m2_b,
            )
        }
    }
}

#[derive(Clone, Copy)]
struct FromMoments {
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    count: u64,
    mean: *const f64,
    m2: *const f64,
    eps: f32,
    momentum: f32,
    flags: u32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
}

impl Call for FromMoments {
    fn call(&self) -> nk_status {
        // SAFETY: as for Training.
        unsafe {
            nk_batchnorm_forward_from_moments(
                self.ctx,
                self.shape,
                self.x,
                self.y,
                self.gamma,
                self.beta,
                self.count,
                self.mean,
                self.m2,
                self.eps,
                self.momentum,
                self.flags,
                self.running_mean,
                self.running_var,
                self.save_mean,
                self.save_invstd,
            )
        }
    }
}

#[derive(Clone, Copy)]
struct Fold {
    c_out: usize,
    fan_in: usize,
    weight: *mut f32,
    bias: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    mean: *const f32,
    var: *const f32,
    eps: f32,
}

impl Call for Fold {
    fn call(&self) -> nk_status {
        // SAFETY: as for Training.
        unsafe {
            nk_batchnorm_fold(
                self.c_out,
                self.fan_in,
                self.weight,
                self.bias,
                self.gamma,
                self.beta,
                self.mean,
                self.var,
                self.eps,
            )
        }
    }
}

/// A variation of the fixture's valid call and the status the contract gives it.
type Case<T> = (&'static str, nk_status, fn(&Fx, &mut T));

/// Runs every case on a fresh fixture: the status must be the expected one, and after an error
/// the whole arena must be unchanged and the thread's last error message non-empty.
#[track_caller]
fn run_cases<T: Call>(function: &str, make: fn(&Fx) -> T, cases: &[Case<T>]) {
    let mut failures = Vec::new();
    for (seed, (what, expected, mutate)) in cases.iter().enumerate() {
        let fx = Fx::new(seed as u64);
        let mut call = make(&fx);
        mutate(&fx, &mut call);
        let before = fx.arena.bytes();
        let got = call.call();
        if got != *expected {
            failures.push(format!(
                "{function}: {what}: {got:?}, expected {expected:?}"
            ));
            continue;
        }
        if got != NK_OK {
            let after = fx.arena.bytes();
            if let Some(i) = before.iter().zip(&after).position(|(a, b)| a != b) {
                failures.push(format!(
                    "{function}: {what}: {got:?} but byte {i} of the buffers changed"
                ));
            }
            if last_error().is_empty() {
                failures.push(format!(
                    "{function}: {what}: {got:?} with an empty last error message"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Shapes whose element or byte counts overflow `size_t` (64-bit).
const HUGE: usize = 1 << 40;

fn huge_elements(s: &mut nk_shape) {
    // 2^40 * 3 * 2^40 elements.
    s.batch = HUGE;
    s.spatial = HUGE;
}

fn huge_bytes(s: &mut nk_shape) {
    // 2^62 elements fit in size_t, their 2^64 bytes do not.
    s.batch = 1 << 31;
    s.channels = 1 << 31;
    s.spatial = 1;
}

fn huge_channels(s: &mut nk_shape) {
    // batch * spatial = 1: one value per channel; C * S overflows.
    s.batch = 1;
    s.spatial = 1;
    s.channels = usize::MAX / 2;
}

// ---------------------------------------------------------------------------------------------
// Training forward.

#[test]
fn training_statuses() {
    let cases: &[Case<Training>] = &[
        ("valid", NK_OK, |_, _| {}),
        // Optional pointers.
        ("no gamma", NK_OK, |_, t| t.gamma = null()),
        ("no beta", NK_OK, |_, t| t.beta = null()),
        ("no running statistics", NK_OK, |_, t| {
            t.running_mean = null_mut();
            t.running_var = null_mut();
        }),
        ("no saved statistics", NK_OK, |_, t| {
            t.save_mean = null_mut();
            t.save_invstd = null_mut();
        }),
        ("in place", NK_OK, |fx, t| t.y = fx.x),
        ("gamma == beta (two inputs)", NK_OK, |fx, t| {
            t.beta = fx.gamma
        }),
        ("NSC", NK_OK, |_, t| t.shape.layout = NSC),
        ("eps 0", NK_OK, |_, t| t.eps = 0.0),
        ("eps -0.0", NK_OK, |_, t| t.eps = -0.0),
        ("momentum 0", NK_OK, |_, t| t.momentum = 0.0),
        ("momentum 1", NK_OK, |_, t| t.momentum = 1.0),
        ("biased flag", NK_OK, |_, t| {
            t.flags = NK_BN_RUNNING_VAR_BIASED
        }),
        ("count 1, biased running var", NK_OK, |_, t| {
            (t.shape.batch, t.shape.spatial) = (1, 1);
            t.flags = NK_BN_RUNNING_VAR_BIASED;
        }),
        ("count 1, no running stats", NK_OK, |_, t| {
            (t.shape.batch, t.shape.spatial) = (1, 1);
            t.running_mean = null_mut();
            t.running_var = null_mut();
        }),
        ("own context", NK_OK, |_, t| t.ctx = context(2)),
        // NULL.
        ("x NULL", NK_ERR_NULL_POINTER, |_, t| t.x = null()),
        ("y NULL", NK_ERR_NULL_POINTER, |_, t| t.y = null_mut()),
        ("running_mean alone", NK_ERR_NULL_POINTER, |_, t| {
            t.running_var = null_mut()
        }),
        ("running_var alone", NK_ERR_NULL_POINTER, |_, t| {
            t.running_mean = null_mut()
        }),
        (
            "running_var alone, no saves",
            NK_ERR_NULL_POINTER,
            |_, t| {
                t.running_mean = null_mut();
                t.save_mean = null_mut();
                t.save_invstd = null_mut();
            },
        ),
        // Overflow.
        ("elements overflow", NK_ERR_OVERFLOW, |_, t| {
            huge_elements(&mut t.shape)
        }),
        ("bytes overflow", NK_ERR_OVERFLOW, |_, t| {
            huge_bytes(&mut t.shape)
        }),
        ("channels overflow", NK_ERR_OVERFLOW, |_, t| {
            huge_channels(&mut t.shape)
        }),
        ("count overflows", NK_ERR_OVERFLOW, |_, t| {
            t.shape.batch = usize::MAX;
            t.shape.spatial = 3;
            t.shape.channels = 1;
        }),
        // Count rules.
        ("batch 0", NK_ERR_BAD_SHAPE, |_, t| t.shape.batch = 0),
        ("spatial 0", NK_ERR_BAD_SHAPE, |_, t| t.shape.spatial = 0),
        ("batch 0, no running", NK_ERR_BAD_SHAPE, |_, t| {
            t.shape.batch = 0;
            t.running_mean = null_mut();
            t.running_var = null_mut();
        }),
        ("batch 0, biased", NK_ERR_BAD_SHAPE, |_, t| {
            t.shape.batch = 0;
            t.flags = NK_BN_RUNNING_VAR_BIASED;
        }),
        ("count 1, unbiased running var", NK_ERR_BAD_SHAPE, |_, t| {
            (t.shape.batch, t.shape.spatial) = (1, 1)
        }),
        // Arguments.
        ("eps < 0", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = -1e-5),
        ("eps NaN", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = f32::NAN),
        ("eps inf", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = f32::INFINITY),
        ("eps -inf", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.eps = f32::NEG_INFINITY
        }),
        ("momentum < 0", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.momentum = -0.01
        }),
        ("momentum > 1", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.momentum = 1.01
        }),
        ("momentum NaN", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.momentum = f32::NAN
        }),
        ("momentum inf", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.momentum = f32::INFINITY
        }),
        (
            "momentum > 1 without running",
            NK_ERR_BAD_ARGUMENT,
            |_, t| {
                t.momentum = 2.0;
                t.running_mean = null_mut();
                t.running_var = null_mut();
            },
        ),
        ("flag FUSE_RELU", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.flags = NK_BN_FUSE_RELU
        }),
        ("flag bit 2", NK_ERR_BAD_ARGUMENT, |_, t| t.flags = 4),
        ("flag bit 31 with biased", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.flags = NK_BN_RUNNING_VAR_BIASED | 1 << 31
        }),
        ("layout 2", NK_ERR_BAD_ARGUMENT, |_, t| t.shape.layout = 2),
        ("layout -1", NK_ERR_BAD_ARGUMENT, |_, t| t.shape.layout = -1),
        // Alignment.
        ("x + 1 byte", NK_ERR_MISALIGNED, |_, t| {
            t.x = shift(t.x.cast_mut(), 1)
        }),
        ("x + 2 bytes", NK_ERR_MISALIGNED, |_, t| {
            t.x = shift(t.x.cast_mut(), 2)
        }),
        ("y + 3 bytes", NK_ERR_MISALIGNED, |_, t| t.y = shift(t.y, 3)),
        ("gamma + 1 byte", NK_ERR_MISALIGNED, |_, t| {
            t.gamma = shift(t.gamma.cast_mut(), 1)
        }),
        ("beta + 2 bytes", NK_ERR_MISALIGNED, |_, t| {
            t.beta = shift(t.beta.cast_mut(), 2)
        }),
        ("running_mean + 1 byte", NK_ERR_MISALIGNED, |_, t| {
            t.running_mean = shift(t.running_mean, 1)
        }),
        ("running_var + 3 bytes", NK_ERR_MISALIGNED, |_, t| {
            t.running_var = shift(t.running_var, 3)
        }),
        ("save_mean + 1 byte", NK_ERR_MISALIGNED, |_, t| {
            t.save_mean = shift(t.save_mean, 1)
        }),
        ("save_invstd + 2 bytes", NK_ERR_MISALIGNED, |_, t| {
            t.save_invstd = shift(t.save_invstd, 2)
        }),
        ("in place, both misaligned", NK_ERR_MISALIGNED, |fx, t| {
            t.x = shift(fx.x, 1);
            t.y = shift(fx.x, 1);
        }),
        // Aliasing.
        ("y = x + 1 element", NK_ERR_ALIAS, |fx, t| {
            t.y = shift(fx.x, 4)
        }),
        ("y = x - 1 element", NK_ERR_ALIAS, |fx, t| {
            t.y = shift(fx.x, -4)
        }),
        ("gamma == y", NK_ERR_ALIAS, |fx, t| t.gamma = fx.y),
        ("beta inside y", NK_ERR_ALIAS, |fx, t| {
            t.beta = shift(fx.y, 8)
        }),
        ("save_mean == gamma (same extent)", NK_ERR_ALIAS, |fx, t| {
            t.save_mean = fx.gamma
        }),
        ("save_mean == running_mean", NK_ERR_ALIAS, |fx, t| {
            t.save_mean = fx.running_mean
        }),
        ("save_invstd == running_var", NK_ERR_ALIAS, |fx, t| {
            t.save_invstd = fx.running_var
        }),
        ("save_invstd overlaps save_mean", NK_ERR_ALIAS, |fx, t| {
            t.save_invstd = shift(fx.save_mean, 4)
        }),
        ("running_var == running_mean", NK_ERR_ALIAS, |fx, t| {
            t.running_var = fx.running_mean
        }),
        ("running_mean inside x", NK_ERR_ALIAS, |fx, t| {
            t.running_mean = shift(fx.x, 16)
        }),
        ("save_mean inside y", NK_ERR_ALIAS, |fx, t| {
            t.save_mean = shift(fx.y, 40)
        }),
        ("save_invstd inside x, in place", NK_ERR_ALIAS, |fx, t| {
            t.y = fx.x;
            t.save_invstd = shift(fx.x, 20);
        }),
    ];
    run_cases("nk_batchnorm_forward_training", Fx::training, cases);
}

#[test]
fn training_precedence() {
    let cases: &[Case<Training>] = &[
        ("NULL x + overflow", NK_ERR_NULL_POINTER, |_, t| {
            t.x = null();
            huge_elements(&mut t.shape);
        }),
        ("running alone + count 0", NK_ERR_NULL_POINTER, |_, t| {
            t.running_var = null_mut();
            t.shape.batch = 0;
        }),
        ("NULL y + bad eps", NK_ERR_NULL_POINTER, |_, t| {
            t.y = null_mut();
            t.eps = -1.0;
        }),
        ("NULL x + misaligned y", NK_ERR_NULL_POINTER, |_, t| {
            t.x = null();
            t.y = shift(t.y, 1);
        }),
        (
            "running alone + aliased saves",
            NK_ERR_NULL_POINTER,
            |fx, t| {
                t.running_mean = null_mut();
                t.save_mean = fx.save_invstd;
            },
        ),
        ("overflow + count 1 unbiased", NK_ERR_OVERFLOW, |_, t| {
            huge_channels(&mut t.shape)
        }),
        ("overflow + unknown layout", NK_ERR_OVERFLOW, |_, t| {
            huge_bytes(&mut t.shape);
            t.shape.layout = 5;
        }),
        (
            "overflow + bad momentum + misaligned x",
            NK_ERR_OVERFLOW,
            |_, t| {
                huge_elements(&mut t.shape);
                t.momentum = f32::NAN;
                t.x = shift(t.x.cast_mut(), 1);
            },
        ),
        ("count 0 + bad eps", NK_ERR_BAD_SHAPE, |_, t| {
            t.shape.batch = 0;
            t.eps = f32::NAN;
        }),
        ("count 0 + unknown layout", NK_ERR_BAD_SHAPE, |_, t| {
            t.shape.spatial = 0;
            t.shape.layout = 3;
        }),
        (
            "count 1 unbiased + bad momentum",
            NK_ERR_BAD_SHAPE,
            |_, t| {
                (t.shape.batch, t.shape.spatial) = (1, 1);
                t.momentum = 1.5;
            },
        ),
        (
            "count 1 unbiased + unknown flag bit",
            NK_ERR_BAD_SHAPE,
            |_, t| {
                (t.shape.batch, t.shape.spatial) = (1, 1);
                t.flags = 8;
            },
        ),
        (
            "count 1 unbiased + misaligned y",
            NK_ERR_BAD_SHAPE,
            |_, t| {
                (t.shape.batch, t.shape.spatial) = (1, 1);
                t.y = shift(t.y, 2);
            },
        ),
        ("bad eps + misaligned x", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.eps = -1.0;
            t.x = shift(t.x.cast_mut(), 1);
        }),
        (
            "unknown layout + y overlapping x",
            NK_ERR_BAD_ARGUMENT,
            |fx, t| {
                t.shape.layout = 2;
                t.y = shift(fx.x, 4);
            },
        ),
        (
            "unknown flag + misaligned running_var",
            NK_ERR_BAD_ARGUMENT,
            |_, t| {
                t.flags = 2;
                t.running_var = shift(t.running_var, 1);
            },
        ),
        ("misaligned y overlapping x", NK_ERR_MISALIGNED, |fx, t| {
            t.y = shift(fx.x, 2)
        }),
        (
            "misaligned save_mean overlapping running_mean",
            NK_ERR_MISALIGNED,
            |fx, t| t.save_mean = shift(fx.running_mean, 1),
        ),
        (
            "aliased saves + misaligned gamma",
            NK_ERR_MISALIGNED,
            |fx, t| {
                t.save_mean = fx.save_invstd;
                t.gamma = shift(t.gamma.cast_mut(), 3);
            },
        ),
    ];
    run_cases("nk_batchnorm_forward_training", Fx::training, cases);
}

// ---------------------------------------------------------------------------------------------
// Inference forward.

#[test]
fn inference_statuses_and_precedence() {
    let cases: &[Case<Inference>] = &[
        ("valid", NK_OK, |_, _| {}),
        ("no gamma, no beta", NK_OK, |_, t| {
            t.gamma = null();
            t.beta = null();
        }),
        ("in place", NK_OK, |fx, t| t.y = fx.x),
        ("FUSE_RELU", NK_OK, |_, t| t.flags = NK_BN_FUSE_RELU),
        ("mean == var (two inputs)", NK_OK, |fx, t| {
            t.var = fx.mean.cast_const()
        }),
        ("NSC, own context", NK_OK, |_, t| {
            t.shape.layout = NSC;
            t.ctx = context(3);
        }),
        ("batch 0", NK_OK, |_, t| t.shape.batch = 0),
        ("x NULL", NK_ERR_NULL_POINTER, |_, t| t.x = null()),
        ("y NULL", NK_ERR_NULL_POINTER, |_, t| t.y = null_mut()),
        ("mean NULL", NK_ERR_NULL_POINTER, |_, t| t.mean = null()),
        ("var NULL", NK_ERR_NULL_POINTER, |_, t| t.var = null()),
        ("elements overflow", NK_ERR_OVERFLOW, |_, t| {
            huge_elements(&mut t.shape)
        }),
        ("bytes overflow", NK_ERR_OVERFLOW, |_, t| {
            huge_bytes(&mut t.shape)
        }),
        ("channels overflow", NK_ERR_OVERFLOW, |_, t| {
            huge_channels(&mut t.shape)
        }),
        ("eps < 0", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = -0.5),
        ("eps NaN", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = f32::NAN),
        ("eps inf", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = f32::INFINITY),
        ("flag RUNNING_VAR_BIASED", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.flags = NK_BN_RUNNING_VAR_BIASED
        }),
        ("flag bit 2 with ReLU", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.flags = NK_BN_FUSE_RELU | 4
        }),
        ("layout 2", NK_ERR_BAD_ARGUMENT, |_, t| t.shape.layout = 2),
        ("layout i32::MIN", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.shape.layout = i32::MIN
        }),
        ("x misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.x = shift(t.x.cast_mut(), 1)
        }),
        ("y misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.y = shift(t.y, 2)
        }),
        ("gamma misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.gamma = shift(t.gamma.cast_mut(), 3)
        }),
        ("beta misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.beta = shift(t.beta.cast_mut(), 1)
        }),
        ("mean misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.mean = shift(t.mean.cast_mut(), 2)
        }),
        ("var misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.var = shift(t.var.cast_mut(), 1)
        }),
        ("y = x + 1 element", NK_ERR_ALIAS, |fx, t| {
            t.y = shift(fx.x, 4)
        }),
        ("mean == y", NK_ERR_ALIAS, |fx, t| t.mean = fx.y),
        ("var inside y", NK_ERR_ALIAS, |fx, t| {
            t.var = shift(fx.y, 60)
        }),
        ("gamma inside y, in place", NK_ERR_ALIAS, |fx, t| {
            t.y = fx.x;
            t.gamma = shift(fx.x, 4);
        }),
        // Precedence.
        ("NULL mean + overflow", NK_ERR_NULL_POINTER, |_, t| {
            t.mean = null();
            huge_bytes(&mut t.shape);
        }),
        (
            "NULL var + bad flag + misaligned",
            NK_ERR_NULL_POINTER,
            |_, t| {
                t.var = null();
                t.flags = 1;
                t.x = shift(t.x.cast_mut(), 1);
            },
        ),
        ("overflow + bad eps", NK_ERR_OVERFLOW, |_, t| {
            huge_elements(&mut t.shape);
            t.eps = f32::NAN;
        }),
        ("overflow + unknown layout", NK_ERR_OVERFLOW, |_, t| {
            huge_channels(&mut t.shape);
            t.shape.layout = 9;
        }),
        ("bad flag + misaligned mean", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.flags = 1;
            t.mean = shift(t.mean.cast_mut(), 1);
        }),
        (
            "unknown layout + aliased y",
            NK_ERR_BAD_ARGUMENT,
            |fx, t| {
                t.shape.layout = 7;
                t.y = shift(fx.x, -4);
            },
        ),
        ("misaligned y overlapping x", NK_ERR_MISALIGNED, |fx, t| {
            t.y = shift(fx.x, 1)
        }),
    ];
    run_cases("nk_batchnorm_forward_inference", Fx::inference, cases);
}

// ---------------------------------------------------------------------------------------------
// Moments and merge.

#[test]
fn moments_statuses_and_precedence() {
    let cases: &[Case<Moments>] = &[
        ("valid", NK_OK, |_, _| {}),
        ("NSC, own context", NK_OK, |_, t| {
            t.shape.layout = NSC;
            t.ctx = context(2);
        }),
        ("x NULL", NK_ERR_NULL_POINTER, |_, t| t.x = null()),
        ("mean NULL", NK_ERR_NULL_POINTER, |_, t| t.mean = null_mut()),
        ("m2 NULL", NK_ERR_NULL_POINTER, |_, t| t.m2 = null_mut()),
        ("mean NULL, batch 0", NK_ERR_NULL_POINTER, |_, t| {
            t.mean = null_mut();
            t.shape.batch = 0;
        }),
        ("elements overflow", NK_ERR_OVERFLOW, |_, t| {
            huge_elements(&mut t.shape)
        }),
        ("bytes overflow", NK_ERR_OVERFLOW, |_, t| {
            huge_bytes(&mut t.shape)
        }),
        ("layout 2", NK_ERR_BAD_ARGUMENT, |_, t| t.shape.layout = 2),
        ("layout 2, empty", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.shape.layout = 2;
            t.shape.batch = 0;
        }),
        ("x misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.x = shift(t.x.cast_mut(), 2)
        }),
        ("mean 4-byte aligned only", NK_ERR_MISALIGNED, |_, t| {
            t.mean = shift(t.mean, 4)
        }),
        ("m2 + 1 byte", NK_ERR_MISALIGNED, |_, t| {
            t.m2 = shift(t.m2, 1)
        }),
        ("mean == m2", NK_ERR_ALIAS, |fx, t| t.m2 = fx.mean_a),
        ("m2 overlaps mean", NK_ERR_ALIAS, |fx, t| {
            t.m2 = shift(fx.mean_a, 8)
        }),
        ("mean inside x", NK_ERR_ALIAS, |fx, t| t.mean = fx.x.cast()),
        // Precedence.
        ("NULL x + overflow", NK_ERR_NULL_POINTER, |_, t| {
            t.x = null();
            huge_elements(&mut t.shape);
        }),
        ("overflow + layout", NK_ERR_OVERFLOW, |_, t| {
            huge_bytes(&mut t.shape);
            t.shape.layout = -3;
        }),
        ("layout + misaligned", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.shape.layout = 4;
            t.m2 = shift(t.m2, 4);
        }),
        (
            "misaligned m2 overlapping mean",
            NK_ERR_MISALIGNED,
            |fx, t| t.m2 = shift(fx.mean_a, 4),
        ),
    ];
    run_cases("nk_moments", Fx::moments, cases);
}

#[test]
fn merge_statuses_and_precedence() {
    let cases: &[Case<Merge>] = &[
        ("valid", NK_OK, |_, _| {}),
        ("count_a 0", NK_OK, |_, t| t.count_a = 0),
        ("counts summing to u64::MAX", NK_OK, |_, t| {
            t.count_a = u64::MAX - 5
        }),
        ("mean_b == m2_b (two inputs)", NK_OK, |fx, t| {
            t.m2_b = fx.mean_b.cast_const()
        }),
        ("mean_a NULL", NK_ERR_NULL_POINTER, |_, t| {
            t.mean_a = null_mut()
        }),
        ("m2_a NULL", NK_ERR_NULL_POINTER, |_, t| t.m2_a = null_mut()),
        ("mean_b NULL", NK_ERR_NULL_POINTER, |_, t| t.mean_b = null()),
        ("m2_b NULL", NK_ERR_NULL_POINTER, |_, t| t.m2_b = null()),
        ("counts overflow", NK_ERR_OVERFLOW, |_, t| {
            t.count_a = u64::MAX - 4
        }),
        ("counts overflow, both huge", NK_ERR_OVERFLOW, |_, t| {
            t.count_a = u64::MAX;
            t.count_b = u64::MAX;
        }),
        ("channels bytes overflow", NK_ERR_OVERFLOW, |_, t| {
            t.channels = usize::MAX / 4
        }),
        ("mean_a misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.mean_a = shift(t.mean_a, 4)
        }),
        ("m2_a misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.m2_a = shift(t.m2_a, 1)
        }),
        ("mean_b misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.mean_b = shift(t.mean_b.cast_mut(), 4)
        }),
        ("m2_b misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.m2_b = shift(t.m2_b.cast_mut(), 2)
        }),
        ("mean_a == mean_b", NK_ERR_ALIAS, |fx, t| {
            t.mean_b = fx.mean_a
        }),
        ("m2_a overlaps m2_b", NK_ERR_ALIAS, |fx, t| {
            t.m2_b = shift(fx.m2_a, 8)
        }),
        ("mean_a == m2_a", NK_ERR_ALIAS, |fx, t| t.m2_a = fx.mean_a),
        ("m2_b == mean_a", NK_ERR_ALIAS, |fx, t| t.m2_b = fx.mean_a),
        // Precedence.
        ("NULL + counts overflow", NK_ERR_NULL_POINTER, |_, t| {
            t.m2_b = null();
            t.count_b = u64::MAX;
        }),
        ("counts overflow + misaligned", NK_ERR_OVERFLOW, |_, t| {
            t.count_b = u64::MAX;
            t.mean_a = shift(t.mean_a, 4);
        }),
        ("counts overflow + alias", NK_ERR_OVERFLOW, |fx, t| {
            t.count_b = u64::MAX;
            t.mean_b = fx.mean_a;
        }),
        ("misaligned + alias", NK_ERR_MISALIGNED, |fx, t| {
            t.mean_b = shift(fx.mean_a, 4)
        }),
    ];
    run_cases("nk_moments_merge", Fx::merge, cases);
}

// ---------------------------------------------------------------------------------------------
// Forward from moments.

#[test]
fn from_moments_statuses_and_precedence() {
    let cases: &[Case<FromMoments>] = &[
        ("valid", NK_OK, |_, _| {}),
        ("in place", NK_OK, |fx, t| t.y = fx.x),
        ("no optional outputs", NK_OK, |_, t| {
            t.running_mean = null_mut();
            t.running_var = null_mut();
            t.save_mean = null_mut();
            t.save_invstd = null_mut();
            t.gamma = null();
            t.beta = null();
        }),
        ("empty local shard", NK_OK, |_, t| t.shape.batch = 0),
        ("empty local shard, NULL data", NK_OK, |_, t| {
            t.shape.batch = 0;
            t.x = null();
            t.y = null_mut();
        }),
        ("count 1, biased, one-value shard", NK_OK, |_, t| {
            t.count = 1;
            t.flags = NK_BN_RUNNING_VAR_BIASED;
            t.shape.batch = 1;
            t.shape.spatial = 1;
        }),
        (
            "count below the shard's values",
            NK_ERR_BAD_SHAPE,
            |_, t| {
                t.count = COUNT - 1;
            },
        ),
        ("x NULL", NK_ERR_NULL_POINTER, |_, t| t.x = null()),
        ("y NULL", NK_ERR_NULL_POINTER, |_, t| t.y = null_mut()),
        ("mean NULL", NK_ERR_NULL_POINTER, |_, t| t.mean = null()),
        ("m2 NULL", NK_ERR_NULL_POINTER, |_, t| t.m2 = null()),
        ("m2 NULL, empty shard", NK_ERR_NULL_POINTER, |_, t| {
            t.m2 = null();
            t.shape.batch = 0;
        }),
        ("running_mean alone", NK_ERR_NULL_POINTER, |_, t| {
            t.running_var = null_mut()
        }),
        ("running_var alone", NK_ERR_NULL_POINTER, |_, t| {
            t.running_mean = null_mut()
        }),
        ("elements overflow", NK_ERR_OVERFLOW, |_, t| {
            huge_elements(&mut t.shape)
        }),
        ("bytes overflow", NK_ERR_OVERFLOW, |_, t| {
            huge_bytes(&mut t.shape)
        }),
        ("count 0", NK_ERR_BAD_SHAPE, |_, t| t.count = 0),
        ("count 0, empty shard", NK_ERR_BAD_SHAPE, |_, t| {
            t.count = 0;
            t.shape.batch = 0;
        }),
        ("count 1, unbiased running var", NK_ERR_BAD_SHAPE, |_, t| {
            t.count = 1
        }),
        ("eps < 0", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = -1.0),
        ("eps NaN", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = f32::NAN),
        ("momentum > 1", NK_ERR_BAD_ARGUMENT, |_, t| t.momentum = 1.5),
        ("momentum NaN, no running", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.momentum = f32::NAN;
            t.running_mean = null_mut();
            t.running_var = null_mut();
        }),
        ("flag FUSE_RELU", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.flags = NK_BN_FUSE_RELU
        }),
        ("layout 2", NK_ERR_BAD_ARGUMENT, |_, t| t.shape.layout = 2),
        ("x misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.x = shift(t.x.cast_mut(), 1)
        }),
        ("y misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.y = shift(t.y, 1)
        }),
        ("gamma misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.gamma = shift(t.gamma.cast_mut(), 2)
        }),
        ("beta misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.beta = shift(t.beta.cast_mut(), 3)
        }),
        ("mean 4-byte aligned only", NK_ERR_MISALIGNED, |_, t| {
            t.mean = shift(t.mean.cast_mut(), 4)
        }),
        ("m2 4-byte aligned only", NK_ERR_MISALIGNED, |_, t| {
            t.m2 = shift(t.m2.cast_mut(), 4)
        }),
        ("running_mean misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.running_mean = shift(t.running_mean, 1)
        }),
        ("running_var misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.running_var = shift(t.running_var, 2)
        }),
        ("save_mean misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.save_mean = shift(t.save_mean, 3)
        }),
        ("save_invstd misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.save_invstd = shift(t.save_invstd, 1)
        }),
        ("y = x + 1 element", NK_ERR_ALIAS, |fx, t| {
            t.y = shift(fx.x, 4)
        }),
        ("mean inside y", NK_ERR_ALIAS, |fx, t| {
            t.mean = shift(fx.y, 8).cast()
        }),
        ("save_mean == running_mean", NK_ERR_ALIAS, |fx, t| {
            t.save_mean = fx.running_mean
        }),
        ("running_var inside m2", NK_ERR_ALIAS, |fx, t| {
            t.running_var = fx.m2_a.cast()
        }),
        ("save_invstd == save_mean", NK_ERR_ALIAS, |fx, t| {
            t.save_invstd = fx.save_mean
        }),
        // Precedence.
        ("NULL mean + count 0", NK_ERR_NULL_POINTER, |_, t| {
            t.mean = null();
            t.count = 0;
        }),
        ("NULL x + overflow", NK_ERR_NULL_POINTER, |_, t| {
            t.x = null();
            huge_bytes(&mut t.shape);
        }),
        ("overflow + count 0", NK_ERR_OVERFLOW, |_, t| {
            huge_elements(&mut t.shape);
            t.count = 0;
        }),
        ("count 0 + bad eps", NK_ERR_BAD_SHAPE, |_, t| {
            t.count = 0;
            t.eps = f32::INFINITY;
        }),
        (
            "count 1 unbiased + unknown layout",
            NK_ERR_BAD_SHAPE,
            |_, t| {
                t.count = 1;
                t.shape.layout = 2;
            },
        ),
        (
            "bad momentum + misaligned mean",
            NK_ERR_BAD_ARGUMENT,
            |_, t| {
                t.momentum = -1.0;
                t.mean = shift(t.mean.cast_mut(), 4);
            },
        ),
        (
            "misaligned save_mean == running_mean",
            NK_ERR_MISALIGNED,
            |fx, t| {
                t.save_mean = shift(fx.running_mean, 2);
                t.running_mean = t.save_mean;
            },
        ),
    ];
    run_cases(
        "nk_batchnorm_forward_from_moments",
        Fx::forward_from_moments,
        cases,
    );
}

// ---------------------------------------------------------------------------------------------
// Fold.

#[test]
fn fold_statuses_and_precedence() {
    let cases: &[Case<Fold>] = &[
        ("valid", NK_OK, |_, _| {}),
        ("no gamma, no beta", NK_OK, |_, t| {
            t.gamma = null();
            t.beta = null();
        }),
        ("mean == var (two inputs)", NK_OK, |fx, t| t.var = fx.mean),
        ("fan_in 0, NULL weight", NK_OK, |_, t| {
            t.fan_in = 0;
            t.weight = null_mut();
        }),
        ("weight NULL", NK_ERR_NULL_POINTER, |_, t| {
            t.weight = null_mut()
        }),
        ("bias NULL", NK_ERR_NULL_POINTER, |_, t| t.bias = null_mut()),
        ("bias NULL, fan_in 0", NK_ERR_NULL_POINTER, |_, t| {
            t.bias = null_mut();
            t.fan_in = 0;
        }),
        ("mean NULL", NK_ERR_NULL_POINTER, |_, t| t.mean = null()),
        ("var NULL", NK_ERR_NULL_POINTER, |_, t| t.var = null()),
        ("weight overflows", NK_ERR_OVERFLOW, |_, t| {
            t.c_out = HUGE;
            t.fan_in = HUGE;
        }),
        ("weight bytes overflow", NK_ERR_OVERFLOW, |_, t| {
            t.c_out = 1 << 31;
            t.fan_in = 1 << 31;
        }),
        ("eps < 0", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = -1e-3),
        ("eps NaN", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = f32::NAN),
        ("eps inf", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = f32::INFINITY),
        ("weight misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.weight = shift(t.weight, 1)
        }),
        ("bias misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.bias = shift(t.bias, 2)
        }),
        ("gamma misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.gamma = shift(t.gamma.cast_mut(), 3)
        }),
        ("beta misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.beta = shift(t.beta.cast_mut(), 1)
        }),
        ("mean misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.mean = shift(t.mean.cast_mut(), 1)
        }),
        ("var misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.var = shift(t.var.cast_mut(), 2)
        }),
        ("bias inside weight", NK_ERR_ALIAS, |fx, t| {
            t.bias = shift(fx.weight, 8)
        }),
        ("weight overlaps bias", NK_ERR_ALIAS, |fx, t| {
            t.weight = shift(fx.bias, -8)
        }),
        ("gamma == bias", NK_ERR_ALIAS, |fx, t| t.gamma = fx.bias),
        ("mean inside weight", NK_ERR_ALIAS, |fx, t| {
            t.mean = fx.weight
        }),
        // Precedence.
        ("NULL bias + overflow", NK_ERR_NULL_POINTER, |_, t| {
            t.bias = null_mut();
            t.c_out = HUGE;
            t.fan_in = HUGE;
        }),
        ("overflow + bad eps", NK_ERR_OVERFLOW, |_, t| {
            t.c_out = HUGE;
            t.fan_in = HUGE;
            t.eps = -1.0;
        }),
        ("bad eps + misaligned", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.eps = f32::NAN;
            t.weight = shift(t.weight, 1);
        }),
        ("bad eps + alias", NK_ERR_BAD_ARGUMENT, |fx, t| {
            t.eps = -1.0;
            t.bias = fx.weight;
        }),
        ("misaligned + alias", NK_ERR_MISALIGNED, |fx, t| {
            t.bias = shift(fx.weight, 2)
        }),
    ];
    run_cases("nk_batchnorm_fold", Fx::fold, cases);
}

// ---------------------------------------------------------------------------------------------
// Valid calls compute what the reference computes; in place equals out of place.

fn nk_to_shape(s: nk_shape) -> Shape {
    let layout = if s.layout == NCS {
        Layout::Ncs
    } else {
        Layout::Nsc
    };
    Shape::new(s.batch, s.channels, s.spatial, layout)
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= rel * (1.0 + w.abs()),
            "{what}[{i}]: {g} but the reference is {w}"
        );
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn valid_calls_match_reference() {
    for layout in [NCS, NSC] {
        for flags in [0, NK_BN_RUNNING_VAR_BIASED] {
            // Training, out of place then in place.
            let mut outputs = Vec::new();
            for in_place in [false, true] {
                let fx = Fx::new(99);
                let mut t = fx.training();
                t.shape.layout = layout;
                t.flags = flags;
                let shape = nk_to_shape(t.shape);
                let x = read(fx.x, N);
                let (gamma, beta) = (read(fx.gamma, C), read(fx.beta, C));
                let (rm, rv) = (read(fx.running_mean, C), read(fx.running_var, C));
                if in_place {
                    t.y = fx.x;
                }
                assert_eq!(t.call(), NK_OK);
                let want = r::forward_training(
                    &shape,
                    &x,
                    Some(&gamma),
                    Some(&beta),
                    t.eps,
                    t.momentum,
                    flags,
                    Some((&rm, &rv)),
                )
                .unwrap();
                let y = read(t.y, N);
                assert_close(&y, &want.y, 1e-5, "training y");
                let (wm, wv) = want.running.unwrap();
                assert_close(&read(fx.running_mean, C), &wm, 1e-5, "running_mean");
                assert_close(&read(fx.running_var, C), &wv, 1e-5, "running_var");
                assert_close(&read(fx.save_mean, C), &want.save_mean, 1e-5, "save_mean");
                let si = read(fx.save_invstd, C);
                assert_close(&si, &want.save_invstd, 1e-5, "save_invstd");
                outputs.push([
                    bits(&y),
                    bits(&read(fx.running_mean, C)),
                    bits(&read(fx.running_var, C)),
                    bits(&read(fx.save_mean, C)),
                    bits(&si),
                ]);
            }
            assert_eq!(outputs[0], outputs[1], "training in place == out of place");

            // Inference with and without ReLU, out of place then in place.
            for relu in [false, true] {
                let mut ys = Vec::new();
                for in_place in [false, true] {
                    let fx = Fx::new(7);
                    let mut t = fx.inference();
                    t.shape.layout = layout;
                    t.flags = if relu { NK_BN_FUSE_RELU } else { 0 };
                    let x = read(fx.x, N);
                    if in_place {
                        t.y = fx.x;
                    }
                    assert_eq!(t.call(), NK_OK);
                    let (want, _) = r::forward_inference(
                        &nk_to_shape(t.shape),
                        &x,
                        Some(&read(fx.gamma, C)),
                        Some(&read(fx.beta, C)),
                        &read(fx.mean, C),
                        &read(fx.var, C),
                        t.eps,
                        relu,
                    );
                    let y = read(t.y, N);
                    assert_close(&y, &want, 1e-6, "inference y");
                    ys.push(bits(&y));
                }
                assert_eq!(ys[0], ys[1], "inference in place == out of place");
            }

            // Moments.
            let fx = Fx::new(5);
            let mut t = fx.moments();
            t.shape.layout = layout;
            assert_eq!(t.call(), NK_OK);
            let (mean, m2) = r::moments(&nk_to_shape(t.shape), &read(fx.x, N));
            for c in 0..C {
                let (gm, gm2) = (read(fx.mean_a, C)[c], read(fx.m2_a, C)[c]);
                assert!((gm - mean[c]).abs() <= 1e-6 * (1.0 + mean[c].abs()), "mean");
                assert!((gm2 - m2[c]).abs() <= 1e-5 * m2[c], "m2");
            }

            // Forward from moments, out of place then in place.
            let mut outputs = Vec::new();
            for in_place in [false, true] {
                let fx = Fx::new(11);
                let mut t = fx.forward_from_moments();
                t.shape.layout = layout;
                t.flags = flags;
                let x = read(fx.x, N);
                let (rm, rv) = (read(fx.running_mean, C), read(fx.running_var, C));
                let (mean, m2) = (read(fx.mean_a, C), read(fx.m2_a, C));
                if in_place {
                    t.y = fx.x;
                }
                assert_eq!(t.call(), NK_OK);
                let want = r::forward_from_moments(
                    &nk_to_shape(t.shape),
                    &x,
                    Some(&read(fx.gamma, C)),
                    Some(&read(fx.beta, C)),
                    t.count,
                    &mean,
                    &m2,
                    t.eps,
                    t.momentum,
                    flags,
                    Some((&rm, &rv)),
                )
                .unwrap();
                let y = read(t.y, N);
                assert_close(&y, &want.y, 1e-5, "from moments y");
                let (wm, wv) = want.running.unwrap();
                assert_close(&read(fx.running_mean, C), &wm, 1e-5, "running_mean");
                assert_close(&read(fx.running_var, C), &wv, 1e-5, "running_var");
                assert_close(&read(fx.save_mean, C), &want.save_mean, 1e-5, "save_mean");
                assert_close(&read(fx.save_invstd, C), &want.save_invstd, 1e-5, "invstd");
                outputs.push(bits(&y));
            }
            assert_eq!(
                outputs[0], outputs[1],
                "from moments in place == out of place"
            );
        }
    }

    // Merge.
    let fx = Fx::new(3);
    let t = fx.merge();
    let (ma, m2a) = (read(fx.mean_a, C), read(fx.m2_a, C));
    let (mb, m2b) = (read(fx.mean_b, C), read(fx.m2_b, C));
    assert_eq!(t.call(), NK_OK);
    let (wm, wm2) = r::merge(t.count_a, &ma, &m2a, t.count_b, &mb, &m2b);
    for c in 0..C {
        assert!((read(fx.mean_a, C)[c] - wm[c]).abs() <= 1e-14 * (1.0 + wm[c].abs()));
        assert!((read(fx.m2_a, C)[c] - wm2[c]).abs() <= 1e-14 * wm2[c]);
    }
    assert_eq!(read(fx.mean_b, C), mb, "b is only read");

    // Fold.
    let fx = Fx::new(4);
    let t = fx.fold();
    let (w, b) = (read(fx.weight, C * FAN), read(fx.bias, C));
    assert_eq!(t.call(), NK_OK);
    let (ww, wb) = r::fold(
        C,
        FAN,
        &w,
        &b,
        Some(&read(fx.gamma, C)),
        Some(&read(fx.beta, C)),
        &read(fx.mean, C),
        &read(fx.var, C),
        t.eps,
    );
    assert_close(&read(fx.weight, C * FAN), &ww, 1e-6, "folded weight");
    assert_close(&read(fx.bias, C), &wb, 1e-6, "folded bias");
}

// ---------------------------------------------------------------------------------------------
// Zero-element calls.

#[test]
fn zero_element_calls_with_null_data() {
    let empty = |batch, channels, spatial, layout| nk_shape {
        batch,
        channels,
        spatial,
        layout,
    };
    for layout in [NCS, NSC] {
        // SAFETY (all calls below): NULL data pointers with zero-element extents, other pointers
        // into live vectors of the right length.
        unsafe {
            // C = 0: no per-channel arrays either.
            let s = empty(2, 0, 3, layout);
            assert_eq!(
                nk_batchnorm_forward_training(
                    null_mut(),
                    s,
                    null(),
                    null_mut(),
                    null(),
                    null(),
                    1e-5,
                    0.1,
                    0,
                    null_mut(),
                    null_mut(),
                    null_mut(),
                    null_mut()
                ),
                NK_OK
            );
            for s in [
                empty(0, 3, 4, layout),
                empty(2, 0, 3, layout),
                empty(0, 0, 0, layout),
            ] {
                let (mean, var) = (vec![0.5f32; s.channels], vec![2.0f32; s.channels]);
                let pm = if s.channels == 0 {
                    null()
                } else {
                    mean.as_ptr()
                };
                let pv = if s.channels == 0 {
                    null()
                } else {
                    var.as_ptr()
                };
                assert_eq!(
                    nk_batchnorm_forward_inference(
                        null_mut(),
                        s,
                        null(),
                        null_mut(),
                        null(),
                        null(),
                        pm,
                        pv,
                        1e-5,
                        NK_BN_FUSE_RELU
                    ),
                    NK_OK,
                    "inference {s:?}"
                );
            }
            assert_eq!(
                nk_moments(
                    null_mut(),
                    empty(3, 0, 4, layout),
                    null(),
                    null_mut(),
                    null_mut()
                ),
                NK_OK
            );
            // An empty shard's moments are zeros (the identity of the merge).
            let (mut mean, mut m2) = (vec![7.0f64; 3], vec![7.0f64; 3]);
            for s in [empty(0, 3, 4, layout), empty(2, 3, 0, layout)] {
                mean.fill(7.0);
                m2.fill(7.0);
                assert_eq!(
                    nk_moments(null_mut(), s, null(), mean.as_mut_ptr(), m2.as_mut_ptr()),
                    NK_OK
                );
                assert_eq!((&mean, &m2), (&vec![0.0; 3], &vec![0.0; 3]), "{s:?}");
            }
            assert_eq!(
                nk_moments_merge(0, 1, null_mut(), null_mut(), 2, null(), null()),
                NK_OK
            );
            // Merging an empty shard leaves the moments unchanged.
            let (mut ma, mut m2a) = (vec![1.5f64, -2.0, 3.0], vec![4.0f64, 5.0, 6.0]);
            let (mb, m2b) = (vec![0.0f64; 3], vec![0.0f64; 3]);
            assert_eq!(
                nk_moments_merge(
                    3,
                    10,
                    ma.as_mut_ptr(),
                    m2a.as_mut_ptr(),
                    0,
                    mb.as_ptr(),
                    m2b.as_ptr()
                ),
                NK_OK
            );
            assert_eq!((ma, m2a), (vec![1.5, -2.0, 3.0], vec![4.0, 5.0, 6.0]));
            // An empty local shard still writes running and saved statistics.
            let s = empty(0, 3, 4, layout);
            let (mean, m2) = (vec![1.0f64, 2.0, -3.0], vec![8.0f64, 4.0, 20.0]);
            let (mut rm, mut rv) = (vec![0.5f32; 3], vec![1.5f32; 3]);
            let (mut sm, mut si) = (vec![f32::NAN; 3], vec![f32::NAN; 3]);
            assert_eq!(
                nk_batchnorm_forward_from_moments(
                    null_mut(),
                    s,
                    null(),
                    null_mut(),
                    null(),
                    null(),
                    4,
                    mean.as_ptr(),
                    m2.as_ptr(),
                    1e-5,
                    0.25,
                    0,
                    rm.as_mut_ptr(),
                    rv.as_mut_ptr(),
                    sm.as_mut_ptr(),
                    si.as_mut_ptr()
                ),
                NK_OK
            );
            let want = r::forward_from_moments(
                &nk_to_shape(s),
                &[],
                None,
                None,
                4,
                &mean,
                &m2,
                1e-5,
                0.25,
                0,
                Some((&[0.5; 3], &[1.5; 3])),
            )
            .unwrap();
            let (wm, wv) = want.running.unwrap();
            assert_close(&rm, &wm, 1e-6, "empty shard running_mean");
            assert_close(&rv, &wv, 1e-6, "empty shard running_var");
            assert_close(&sm, &want.save_mean, 1e-6, "empty shard save_mean");
            assert_close(&si, &want.save_invstd, 1e-6, "empty shard save_invstd");
            // Fold of no output channels; and of no inputs per channel (bias still folded).
            assert_eq!(
                nk_batchnorm_fold(
                    0,
                    5,
                    null_mut(),
                    null_mut(),
                    null(),
                    null(),
                    null(),
                    null(),
                    1e-5
                ),
                NK_OK
            );
            let mut bias = vec![1.0f32, 2.0];
            let (fm, fv) = ([0.5f32, -1.0], [4.0f32, 0.25]);
            assert_eq!(
                nk_batchnorm_fold(
                    2,
                    0,
                    null_mut(),
                    bias.as_mut_ptr(),
                    null(),
                    null(),
                    fm.as_ptr(),
                    fv.as_ptr(),
                    0.0
                ),
                NK_OK
            );
            let (_, wb) = r::fold(2, 0, &[], &[1.0, 2.0], None, None, &fm, &fv, 0.0);
            assert_close(&bias, &wb, 1e-6, "fold with fan_in 0");
        }
    }
}

/// Scalars and enum values are checked even when there is no data.
#[test]
fn zero_element_calls_still_check_scalars() {
    let s = |batch, layout| nk_shape {
        batch,
        channels: 0,
        spatial: 3,
        layout,
    };
    let training = |shape, eps, momentum, flags| {
        // SAFETY: zero channels, NULL everywhere.
        unsafe {
            nk_batchnorm_forward_training(
                null_mut(),
                shape,
                null(),
                null_mut(),
                null(),
                null(),
                eps,
                momentum,
                flags,
                null_mut(),
                null_mut(),
                null_mut(),
                null_mut(),
            )
        }
    };
    assert_eq!(training(s(2, NCS), -1.0, 0.1, 0), NK_ERR_BAD_ARGUMENT);
    assert_eq!(training(s(2, NCS), 1e-5, 1.5, 0), NK_ERR_BAD_ARGUMENT);
    assert_eq!(training(s(2, NCS), 1e-5, 0.1, 4), NK_ERR_BAD_ARGUMENT);
    assert_eq!(training(s(2, 2), 1e-5, 0.1, 0), NK_ERR_BAD_ARGUMENT);
    assert_eq!(training(s(0, NCS), 1e-5, 0.1, 0), NK_ERR_BAD_SHAPE);
    let inference = |shape, eps, flags| {
        // SAFETY: as above.
        unsafe {
            nk_batchnorm_forward_inference(
                null_mut(),
                shape,
                null(),
                null_mut(),
                null(),
                null(),
                null(),
                null(),
                eps,
                flags,
            )
        }
    };
    assert_eq!(inference(s(0, NCS), f32::NAN, 0), NK_ERR_BAD_ARGUMENT);
    assert_eq!(inference(s(0, NCS), 1e-5, 1), NK_ERR_BAD_ARGUMENT);
    assert_eq!(inference(s(0, -1), 1e-5, 0), NK_ERR_BAD_ARGUMENT);
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            nk_moments(null_mut(), s(0, 2), null(), null_mut(), null_mut()),
            NK_ERR_BAD_ARGUMENT
        );
        assert_eq!(
            nk_moments_merge(0, u64::MAX, null_mut(), null_mut(), 1, null(), null()),
            NK_ERR_OVERFLOW
        );
        assert_eq!(
            nk_batchnorm_fold(
                0,
                0,
                null_mut(),
                null_mut(),
                null(),
                null(),
                null(),
                null(),
                -1.0
            ),
            NK_ERR_BAD_ARGUMENT
        );
        // Running statistics of zero channels: non-NULL pointers to nothing.
        let (mut rm, mut rv) = ([0f32; 1], [0f32; 1]);
        let (rm, rv) = (rm.as_mut_ptr(), rv.as_mut_ptr());
        let from = |batch, count, eps, running: bool| {
            let (rm, rv) = if running {
                (rm, rv)
            } else {
                (null_mut(), null_mut())
            };
            nk_batchnorm_forward_from_moments(
                null_mut(),
                s(batch, NCS),
                null(),
                null_mut(),
                null(),
                null(),
                count,
                null(),
                null(),
                eps,
                0.1,
                0,
                rm,
                rv,
                null_mut(),
                null_mut(),
            )
        };
        assert_eq!(from(0, 0, 1e-5, false), NK_ERR_BAD_SHAPE);
        assert_eq!(from(0, 5, -1.0, false), NK_ERR_BAD_ARGUMENT);
        assert_eq!(from(0, 5, 1e-5, false), NK_OK);
        // The count checked is the one given, not this shard's (fuzzing found the safe API
        // checking N*S = 0 against the unbiased running variance's minimum of 2).
        assert_eq!(from(0, 1, 1e-5, true), NK_ERR_BAD_SHAPE);
        assert_eq!(from(0, 5, 1e-5, true), NK_OK);
        assert_eq!(from(1, 3, 1e-5, true), NK_OK);
        assert_eq!(from(1, 2, 1e-5, true), NK_ERR_BAD_SHAPE);
    }
}

// ---------------------------------------------------------------------------------------------
// Library functions: version, status strings, last error message.

#[test]
fn version_is_consistent() {
    let v = nk_version();
    assert_eq!(
        v,
        (NK_VERSION_MAJOR << 16) | (NK_VERSION_MINOR << 8) | NK_VERSION_PATCH
    );
    assert_eq!(
        (NK_VERSION_MAJOR, NK_VERSION_MINOR, NK_VERSION_PATCH),
        normkit::VERSION
    );
    let package: Vec<u32> = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        package,
        [NK_VERSION_MAJOR, NK_VERSION_MINOR, NK_VERSION_PATCH],
        "the C version is the crate's"
    );
    // Each part fits its byte of nk_version().
    assert_eq!(nk_version() >> 16, NK_VERSION_MAJOR);
    assert_eq!((nk_version() >> 8) & 0xFF, NK_VERSION_MINOR);
    assert_eq!(nk_version() & 0xFF, NK_VERSION_PATCH);
}

#[test]
fn status_strings() {
    let text = |code: i32| -> String {
        let p = nk_status_string(code);
        assert!(!p.is_null(), "nk_status_string({code}) is NULL");
        // SAFETY: a static NUL-terminated string.
        unsafe { CStr::from_ptr(p) }
            .to_str()
            .expect("ASCII")
            .to_string()
    };
    let codes = [
        NK_OK,
        NK_ERR_NULL_POINTER,
        NK_ERR_BAD_SHAPE,
        NK_ERR_BAD_ARGUMENT,
        NK_ERR_OVERFLOW,
        NK_ERR_ALIAS,
        NK_ERR_MISALIGNED,
        NK_ERR_UNSUPPORTED,
        NK_ERR_INTERNAL,
    ];
    let mut seen = Vec::new();
    for (value, status) in codes.into_iter().enumerate() {
        assert_eq!(
            status as i32, value as i32,
            "{status:?} has the contract's value"
        );
        let s = text(value as i32);
        assert!(!s.is_empty(), "{status:?}");
        assert!(!seen.contains(&s), "{status:?} shares its string: {s}");
        seen.push(s);
    }
    // Values outside the enum still give a string, never NULL.
    for value in [9, -1, 1000, i32::MIN, i32::MAX] {
        let s = text(value);
        assert!(!s.is_empty());
        assert!(
            !seen.contains(&s),
            "unknown status {value} reads as a known one"
        );
    }
}

#[test]
fn last_error_message_is_per_thread() {
    // A thread that never failed has "".
    std::thread::spawn(|| {
        assert_eq!(last_error(), "");
        // A successful call does not set it.
        let fx = Fx::new(1);
        assert_eq!(fx.inference().call(), NK_OK);
        assert_eq!(last_error(), "");
        // A failure sets it, on this thread only.
        let mut t = fx.inference();
        t.eps = -1.0;
        assert_eq!(t.call(), NK_ERR_BAD_ARGUMENT);
        let message = last_error();
        assert!(!message.is_empty());
        std::thread::spawn(|| assert_eq!(last_error(), ""))
            .join()
            .unwrap();
        // A later failure replaces it.
        let mut t = fx.training();
        t.x = null();
        assert_eq!(t.call(), NK_ERR_NULL_POINTER);
        assert!(!last_error().is_empty());
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Contexts.

/// A context that lives until the end of the test process (for the cases above).
fn context(threads: usize) -> *mut nk_context {
    let mut ctx = null_mut();
    // SAFETY: `ctx` is a valid place for the pointer.
    assert_eq!(unsafe { nk_context_create(threads, &mut ctx) }, NK_OK);
    assert!(!ctx.is_null());
    ctx
}

fn to_nk_isa(isa: Isa) -> nk_isa {
    match isa {
        Isa::Portable => nk_isa::NK_ISA_PORTABLE,
        Isa::Avx2 => nk_isa::NK_ISA_AVX2,
        Isa::Avx512 => nk_isa::NK_ISA_AVX512,
        Isa::Neon => nk_isa::NK_ISA_NEON,
        _ => unreachable!("a new ISA this code does not know"),
    }
}

#[test]
fn contexts() {
    let best = to_nk_isa(Isa::best());
    // SAFETY: contexts from nk_context_create, destroyed once; NULL where the contract allows.
    unsafe {
        assert_eq!(nk_context_isa(null()), best, "NULL is the default context");
        nk_context_destroy(null_mut());
        for threads in [0, 1, 3] {
            let ctx = context(threads);
            assert_eq!(nk_context_isa(ctx), best, "a new context uses the best ISA");
            for isa in Isa::ALL {
                let status = nk_context_set_isa(ctx, to_nk_isa(isa) as i32);
                if isa.is_supported() {
                    assert_eq!(status, NK_OK, "{isa:?}");
                    assert_eq!(nk_context_isa(ctx), to_nk_isa(isa));
                } else {
                    let before = nk_context_isa(ctx);
                    assert_eq!(status, NK_ERR_UNSUPPORTED, "{isa:?}");
                    assert!(!last_error().is_empty());
                    assert_eq!(nk_context_isa(ctx), before, "unchanged after the error");
                }
                // The context computes the same as the default one, within rounding.
                let fx = Fx::new(threads as u64);
                let mut t = fx.inference();
                t.ctx = ctx;
                assert_eq!(t.call(), NK_OK);
                let y = read(fx.y, N);
                let fx2 = Fx::new(threads as u64);
                assert_eq!(fx2.inference().call(), NK_OK);
                let y2 = read(fx2.y, N);
                for (a, b) in y.iter().zip(&y2) {
                    assert!(
                        (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                        "{isa:?}: {a} vs {b}"
                    );
                }
            }
            assert_eq!(nk_context_set_isa(ctx, 0), NK_OK, "AUTO");
            assert_eq!(nk_context_isa(ctx), best, "AUTO is the best ISA");
            for bad in [5, -1, 100] {
                assert_eq!(
                    nk_context_set_isa(ctx, bad),
                    NK_ERR_BAD_ARGUMENT,
                    "isa {bad}"
                );
                assert_eq!(nk_context_isa(ctx), best, "unchanged after the error");
            }
            nk_context_destroy(ctx);
        }
        // A required context, NULL, with a bad ISA value too: NULL comes first.
        assert_eq!(nk_context_set_isa(null_mut(), 1), NK_ERR_NULL_POINTER);
        assert_eq!(nk_context_set_isa(null_mut(), 99), NK_ERR_NULL_POINTER);
        // `out` is required and aligned.
        assert_eq!(nk_context_create(1, null_mut()), NK_ERR_NULL_POINTER);
        let mut slots = [0u64; 3];
        let misaligned = shift(slots.as_mut_ptr(), 4).cast::<*mut nk_context>();
        assert_eq!(nk_context_create(1, misaligned), NK_ERR_MISALIGNED);
        assert_eq!(slots, [0; 3], "nothing written");
    }
}

/// Calls on one shared context from several threads at once give the same results as alone.
#[test]
fn concurrent_calls_on_one_context() {
    let ctx = context(2) as usize;
    let run = move |seed: u64| -> Vec<u32> {
        let fx = Fx::new(seed);
        let mut t = fx.training();
        t.ctx = ctx as *mut nk_context;
        assert_eq!(t.call(), NK_OK);
        bits(&read(fx.y, N))
    };
    let alone: Vec<Vec<u32>> = (0..4).map(run).collect();
    let together: Vec<Vec<u32>> = (0..4)
        .map(|seed| std::thread::spawn(move || (0..50).map(|_| run(seed)).collect::<Vec<_>>()))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| {
            let all = h.join().unwrap();
            assert!(all.windows(2).all(|w| w[0] == w[1]));
            all.into_iter().next().unwrap()
        })
        .collect();
    assert_eq!(alone, together);
    // SAFETY: no call is in flight any more.
    unsafe { nk_context_destroy(ctx as *mut nk_context) };
}

/// Pointers aligned to their element type and no more (4 mod 64 for floats, 8 mod 64 for
/// doubles) are accepted, and the results are right.
#[test]
fn element_alignment_is_enough() {
    let mut arena = Arena::new(1 << 16);
    // A shape with whole vectors and a tail, so that vector loads and stores are exercised.
    let (b, c, s) = (3, 5, 21);
    let n = b * c * s;
    let f = |arena: &mut Arena, len: usize| shift(arena.alloc::<f32>(len + 1), 4);
    let d = |arena: &mut Arena, len: usize| shift(arena.alloc::<f64>(len + 1), 8);
    let (x, y) = (f(&mut arena, n), f(&mut arena, n));
    let (gamma, beta) = (f(&mut arena, c), f(&mut arena, c));
    let (rm, rv, sm, si) = (
        f(&mut arena, c),
        f(&mut arena, c),
        f(&mut arena, c),
        f(&mut arena, c),
    );
    let (mean, m2, mean_b, m2_b) = (
        d(&mut arena, c),
        d(&mut arena, c),
        d(&mut arena, c),
        d(&mut arena, c),
    );
    let mut g = Gen::new(17);
    let xs = g.normals(n, 3.0, 2.0);
    let (gs, bs) = (g.uniforms(c, 0.5, 2.0), g.uniforms(c, -1.0, 1.0));
    write(x, &xs);
    write(gamma, &gs);
    write(beta, &bs);
    for layout in [NCS, NSC] {
        let shape = nk_shape {
            batch: b,
            channels: c,
            spatial: s,
            layout,
        };
        let rs = nk_to_shape(shape);
        write(rm, &vec![0.0; c]);
        write(rv, &vec![1.0; c]);
        // SAFETY (all calls): every pointer is inside the arena with room for its extent.
        unsafe {
            assert_eq!(
                nk_batchnorm_forward_training(
                    null_mut(),
                    shape,
                    x,
                    y,
                    gamma,
                    beta,
                    1e-5,
                    0.5,
                    0,
                    rm,
                    rv,
                    sm,
                    si
                ),
                NK_OK
            );
            let want = r::forward_training(
                &rs,
                &xs,
                Some(&gs),
                Some(&bs),
                1e-5,
                0.5,
                0,
                Some((&vec![0.0; c], &vec![1.0; c])),
            )
            .unwrap();
            assert_close(&read(y, n), &want.y, 1e-5, "training y");
            let (wm, wv) = want.running.unwrap();
            assert_close(&read(rm, c), &wm, 1e-5, "running_mean");
            assert_close(&read(rv, c), &wv, 1e-5, "running_var");
            assert_close(&read(sm, c), &want.save_mean, 1e-5, "save_mean");
            assert_close(&read(si, c), &want.save_invstd, 1e-5, "save_invstd");

            assert_eq!(
                nk_batchnorm_forward_inference(
                    null_mut(),
                    shape,
                    x,
                    y,
                    gamma,
                    beta,
                    sm,
                    rv,
                    1e-5,
                    NK_BN_FUSE_RELU
                ),
                NK_OK
            );
            let (want_y, _) = r::forward_inference(
                &rs,
                &xs,
                Some(&gs),
                Some(&bs),
                &read(sm, c),
                &read(rv, c),
                1e-5,
                true,
            );
            assert_close(&read(y, n), &want_y, 1e-6, "inference y");

            assert_eq!(nk_moments(null_mut(), shape, x, mean, m2), NK_OK);
            let (want_mean, want_m2) = r::moments(&rs, &xs);
            for ch in 0..c {
                let (gm, gm2) = (read(mean, c)[ch], read(m2, c)[ch]);
                assert!((gm - want_mean[ch]).abs() <= 1e-6 * (1.0 + want_mean[ch].abs()));
                assert!((gm2 - want_m2[ch]).abs() <= 1e-5 * want_m2[ch]);
            }
            write(mean_b, &read(mean, c));
            write(m2_b, &read(m2, c));
            let (ma, m2a) = (read(mean, c), read(m2, c));
            assert_eq!(
                nk_moments_merge(c, COUNT, mean, m2, COUNT, mean_b, m2_b),
                NK_OK
            );
            let (wm, wm2) = r::merge(COUNT, &ma, &m2a, COUNT, &ma, &m2a);
            for ch in 0..c {
                assert!((read(mean, c)[ch] - wm[ch]).abs() <= 1e-12 * (1.0 + wm[ch].abs()));
                assert!((read(m2, c)[ch] - wm2[ch]).abs() <= 1e-12 * wm2[ch]);
            }

            let count = 2 * (b * s) as u64;
            assert_eq!(
                nk_batchnorm_forward_from_moments(
                    null_mut(),
                    shape,
                    x,
                    y,
                    gamma,
                    beta,
                    count,
                    mean,
                    m2,
                    1e-5,
                    0.5,
                    0,
                    null_mut(),
                    null_mut(),
                    sm,
                    si
                ),
                NK_OK
            );
            let want = r::forward_from_moments(
                &rs,
                &xs,
                Some(&gs),
                Some(&bs),
                count,
                &read(mean, c),
                &read(m2, c),
                1e-5,
                0.5,
                0,
                None,
            )
            .unwrap();
            assert_close(&read(y, n), &want.y, 1e-5, "from moments y");

            let (w0, b0) = (g.normals(c * 7, 0.0, 1.0), g.normals(c, 0.0, 1.0));
            let (weight, bias) = (x, y);
            write(weight, &w0);
            write(bias, &b0);
            assert_eq!(
                nk_batchnorm_fold(c, 7, weight, bias, gamma, beta, sm, rv, 1e-5),
                NK_OK
            );
            let (ww, wb) = r::fold(
                c,
                7,
                &w0,
                &b0,
                Some(&gs),
                Some(&bs),
                &read(sm, c),
                &read(rv, c),
                1e-5,
            );
            assert_close(&read(weight, c * 7), &ww, 1e-6, "folded weight");
            assert_close(&read(bias, c), &wb, 1e-6, "folded bias");
            write(x, &xs);
        }
    }
}
