//! Training forward of channels-first channels, each read from memory once: a group's moments,
//! then its normalization while its data is still in cache.

use super::moments::{Moments, channel_moments};
use super::normalize::{WideAffine, affine_span};
use crate::io::{RowIo, Spread};
use crate::simd::element::ElementIo;
use crate::simd::{F32Vec, Kernel};
use std::ops::Range;

/// Channels `channels` of a channels-first tensor of `total` channels, [`GROUP`] at a time:
/// channel `ch` is `rows` rows of `spatial` elements, read through `row_in(ch, n)` for its
/// moments, then mapped through `row_out(ch, n)` with the parameters `params(ch, moments)`
/// derives (in `f32` where they fit, else in `f64`). Its moments go to `out[ch -
/// channels.start]`. Several channels per task, so that a tensor of thousands of small channels
/// costs one task and one dispatch per group of channels, not per channel.
pub(crate) struct ChannelTraining<'r, In, Out, P> {
    pub rows: usize,
    pub spatial: usize,
    pub channels: Range<usize>,
    pub total: usize,
    pub row_in: &'r In,
    pub row_out: &'r Out,
    pub params: &'r P,
    pub out: &'r mut [Moments],
    /// Streaming stores: for outputs much larger than the caches.
    pub stream: bool,
}

/// Prefetches the row that follows `spatial` elements after the one at `row` (the rows of
/// channel `ch + 1` directly follow those of channel `ch` in memory). Only addresses are
/// computed: the next channel may belong to another task, so no reference to it is made.
#[inline(always)]
fn prefetch_next_row<V: F32Vec, X: ElementIo>(row: *const X, spatial: usize) {
    let next = row.wrapping_add(spatial);
    for line in (0..spatial).step_by(64 / X::BYTES) {
        V::prefetch(next.wrapping_add(line));
    }
}

/// Channels a task takes through each step (moments, parameters, normalization) before the
/// next: a group of small channels (the (8,2048,7,7) of late layers has 392 values per channel)
/// stays in L1 and L2 between the steps.
const GROUP: usize = 32;

impl<'a, 'o, X, Y, In, Out, P> Kernel for ChannelTraining<'_, In, Out, P>
where
    X: ElementIo,
    Y: ElementIo,
    In: Fn(usize, usize) -> &'a [X],
    Out: Fn(usize, usize) -> RowIo<'o, X, Y>,
    P: Fn(usize, Moments) -> WideAffine,
{
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let mut params = [WideAffine::default(); GROUP];
        let starts = self.channels.clone().step_by(GROUP);
        for (first, outs) in starts.zip(self.out.chunks_mut(GROUP)) {
            // The group's moments, then its parameters, then its normalization: each channel's
            // chain of dependent steps (sums, their reduction, a square root and a division)
            // is independent of the next channel's, so the core overlaps them.
            let end = first + outs.len();
            for (ch, out) in (first..).zip(outs.iter_mut()) {
                let row_in = |n: usize| (self.row_in)(ch, n);
                *out = channel_moments::<V, _>(
                    &row_in,
                    self.spatial,
                    0..self.rows * self.spatial,
                    Spread::NONE,
                );
            }
            for ((ch, m), p) in (first..).zip(outs.iter()).zip(params.iter_mut()) {
                *p = (self.params)(ch, *m);
            }
            for (ch, wide) in (first..).zip(&params[..outs.len()]) {
                let Some((shift, scale, offset)) = wide.narrow() else {
                    for n in 0..self.rows {
                        (self.row_out)(ch, n).map_scalar(|_, x| wide.y(x, false));
                    }
                    continue;
                };
                // The last channel of the group prefetches the next group's first one while it
                // is normalized, so that reading overlaps writing.
                let prefetch_next = ch + 1 == end && end < self.total;
                for n in 0..self.rows {
                    let mut row = (self.row_out)(ch, n);
                    if prefetch_next {
                        prefetch_next_row::<V, X>(row.input_ptr(), self.spatial);
                    }
                    affine_span::<V, _, _, false>(&mut row, shift, scale, offset, self.stream);
                }
            }
        }
        if self.stream {
            V::fence_streams();
        }
    }
}
