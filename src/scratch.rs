//! Per-thread scratch buffers, kept from one call to the next.
//!
//! A task that needs working memory (per-channel sums, a staged row) takes it from here instead
//! of the allocator. Freeing memory on every call is not free: the allocator gives pages back to
//! the kernel (`madvise`, `brk`), and on a machine whose other cores run this process's threads
//! the kernel then interrupts those cores to flush their TLBs, which made up 5 to 10% of a
//! mid-size batch norm on a virtual machine. A buffer here lives as long as its thread and keeps
//! the capacity of its largest use up to [`KEEP_BYTES`]; a larger one is freed after its use.
//!
//! Taking is reentrant: each thread keeps a few buffers per type (a call may hold several at
//! once), handed out last-returned first, so that the same sequence of takes in every call gets
//! the same buffers back; a take beyond them gets a new one.
//! The buffer is a guard rather than a closure's argument, so that the kernels using it stay in
//! their SIMD function (a closure is compiled apart, without its caller's target features).

use std::cell::Cell;

/// The most capacity, in bytes, a thread keeps per buffer between uses.
const KEEP_BYTES: usize = 1 << 20;
/// The most buffers a thread keeps per element type between uses.
const KEEP_BUFFERS: usize = 4;

/// An element type with per-thread scratch buffers.
pub(crate) trait Scratch: Copy + 'static {
    /// Runs `f` on this thread's kept buffers of this type.
    fn slot<R>(f: impl FnOnce(&Cell<Vec<Vec<Self>>>) -> R) -> R;
}

macro_rules! scratch_type {
    ($t:ty, $slot:ident) => {
        thread_local! {
            static $slot: Cell<Vec<Vec<$t>>> = const { Cell::new(Vec::new()) };
        }
        impl Scratch for $t {
            #[inline]
            fn slot<R>(f: impl FnOnce(&Cell<Vec<Vec<Self>>>) -> R) -> R {
                $slot.with(f)
            }
        }
    };
}

scratch_type!(f32, SCRATCH_F32);
scratch_type!(f64, SCRATCH_F64);
scratch_type!(crate::kernels::moments::Moments, SCRATCH_MOMENTS);
scratch_type!(crate::kernels::backward::GradSums, SCRATCH_GRAD_SUMS);

/// `len` values of this thread's scratch buffer of type `T`, given back when dropped.
pub(crate) struct Buffer<T: Scratch> {
    buf: Vec<T>,
}

/// Takes a scratch buffer of type `T` of this thread (the one returned last), as `len` values
/// `fill`.
#[inline]
pub(crate) fn take<T: Scratch>(len: usize, fill: T) -> Buffer<T> {
    let mut buf = T::slot(|slot| {
        let mut kept = slot.take();
        let buf = kept.pop();
        slot.set(kept);
        buf
    })
    .unwrap_or_default();
    buf.clear();
    buf.resize(len, fill);
    Buffer { buf }
}

impl<T: Scratch> std::ops::Deref for Buffer<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        &self.buf
    }
}

impl<T: Scratch> std::ops::DerefMut for Buffer<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf
    }
}

impl<T: Scratch> Drop for Buffer<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() * std::mem::size_of::<T>() > KEEP_BYTES {
            return;
        }
        T::slot(|slot| {
            let mut kept = slot.take();
            if kept.len() < KEEP_BUFFERS {
                kept.push(buf);
            }
            slot.set(kept);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept<T: Scratch>() -> usize {
        T::slot(|s| {
            let v = s.take();
            let cap = v.iter().map(Vec::capacity).max().unwrap_or(0);
            s.set(v);
            cap
        })
    }

    #[test]
    fn buffers_are_filled_reused_and_nest() {
        {
            let mut a = take(5, 1.5f64);
            assert_eq!(&a[..], &[1.5; 5]);
            a[0] = 7.0;
            let b = take(3, 2.0f64);
            assert_eq!(&b[..], &[2.0; 3]);
        }
        assert!(kept::<f64>() >= 5);
        // Both nested buffers were kept: two takes at once allocate nothing.
        assert!(
            f64::slot(|s| {
                let v = s.take();
                let n = v.len();
                s.set(v);
                n
            }) >= 2
        );
        assert_eq!(&take(4, 0.0f64)[..], &[0.0; 4]);
        // A buffer larger than KEEP_BYTES is not kept.
        assert_eq!(take(KEEP_BYTES / 4 + 1, 0f32).len(), KEEP_BYTES / 4 + 1);
        assert!(kept::<f32>() <= KEEP_BYTES / 4);
    }
}
