//! Comparisons and contexts shared by the integration tests.

use normkit::{Context, Isa};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// `got` is within `tol` of `want`; a NaN must be NaN, an infinity the same infinity.
pub fn close(got: f64, want: f64, tol: f64) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        got == want
    } else {
        (got - want).abs() <= tol
    }
}

/// The index of the first element whose bits differ (or the shorter length).
pub fn first_bit_diff(a: &[f32], b: &[f32]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter()
        .zip(b)
        .position(|(p, q)| p.to_bits() != q.to_bits())
}

#[track_caller]
pub fn assert_bits(a: &[f32], b: &[f32], what: &str) {
    if let Some(i) = first_bit_diff(a, b) {
        panic!(
            "{what}: not bitwise equal at {i} of {}: {:?} vs {:?}",
            a.len(),
            a.get(i),
            b.get(i)
        );
    }
}

#[track_caller]
pub fn assert_bits64(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = a
        .iter()
        .zip(b)
        .position(|(p, q)| p.to_bits() != q.to_bits())
    {
        panic!("{what}: not bitwise equal at {i}: {} vs {}", a[i], b[i]);
    }
}

// Contexts: one per (threads, ISA) and test thread, so that tests running at the same time never
// change each other's ISA.
thread_local! {
    static CONTEXTS: RefCell<HashMap<(usize, Isa), Rc<Context>>> = RefCell::new(HashMap::new());
}

/// This test thread's context with `threads` threads, forced to `isa`.
pub fn ctx(threads: usize, isa: Isa) -> Rc<Context> {
    CONTEXTS.with(|m| {
        m.borrow_mut()
            .entry((threads, isa))
            .or_insert_with(|| {
                let c = Context::new(threads).expect("context");
                c.set_isa(Some(isa)).expect("a supported ISA");
                assert_eq!(c.isa(), isa);
                Rc::new(c)
            })
            .clone()
    })
}
