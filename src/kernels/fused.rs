//! Training forward of channels-first channels, each in one visit: its moments, then its normalization while its
//! data is still in cache.

use super::moments::{Moments, channel_moments};
use super::normalize::{WideAffine, affine_span};
use crate::io::RowIo;
use crate::simd::element::ElementIo;
use crate::simd::{F32Vec, Kernel};
use std::ops::Range;

/// Channels `channels` of a channels-first tensor of `total` channels, one after the other:
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
        for (ch, out) in self.channels.clone().zip(self.out.iter_mut()) {
            let row_in = |n: usize| (self.row_in)(ch, n);
            let moments =
                channel_moments::<V, _>(&row_in, self.spatial, 0..self.rows * self.spatial);
            *out = moments;
            let wide = (self.params)(ch, moments);
            let Some((shift, scale, offset)) = wide.narrow() else {
                for n in 0..self.rows {
                    (self.row_out)(ch, n).map_scalar(|_, x| wide.y(x, false));
                }
                continue;
            };
            // Prefetch the next channel while normalizing this one (rows of the next channel
            // directly follow this channel's rows in memory), so its reading overlaps this
            // channel's writing.
            let prefetch_next = ch + 1 < self.total;
            for n in 0..self.rows {
                let mut row = (self.row_out)(ch, n);
                if prefetch_next {
                    let next = row.input_ptr().wrapping_add(self.spatial);
                    for line in (0..self.spatial).step_by(64 / X::BYTES) {
                        V::prefetch(next.wrapping_add(line));
                    }
                }
                affine_span::<V, _, _, false>(&mut row, shift, scale, offset, self.stream);
            }
        }
        if self.stream {
            V::fence_streams();
        }
    }
}
