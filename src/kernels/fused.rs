//! Training forward of one channel in one visit: its moments, then its normalization while its
//! data is still in cache.

use super::moments::{Moments, channel_moments};
use super::normalize::{WideAffine, affine_span};
use crate::io::RowIo;
use crate::simd::element::ElementIo;
use crate::simd::{F32Vec, Kernel};

/// One channel of a channels-first tensor: `rows` rows of `spatial` elements, read through
/// `row_in` for the moments, then mapped through `row_out` with the parameters `params` derives
/// from those moments (in `f32` where they fit, else in `f64`). Returns the moments.
pub(crate) struct ChannelTraining<'r, In, Out, P> {
    pub rows: usize,
    pub spatial: usize,
    pub row_in: &'r In,
    pub row_out: &'r Out,
    pub params: &'r P,
    /// Streaming stores: for outputs much larger than the caches.
    pub stream: bool,
    /// Prefetch the next channel while normalizing this one (rows of the next channel directly
    /// follow this channel's rows in memory), so its reading overlaps this channel's writing.
    pub prefetch_next: bool,
}

impl<'a, 'o, X, Y, In, Out, P> Kernel for ChannelTraining<'_, In, Out, P>
where
    X: ElementIo,
    Y: ElementIo,
    In: Fn(usize) -> &'a [X],
    Out: Fn(usize) -> RowIo<'o, X, Y>,
    P: Fn(Moments) -> WideAffine,
{
    type Output = Moments;
    #[inline(always)]
    fn run<V: F32Vec>(self) -> Moments {
        let moments =
            channel_moments::<V, _>(self.row_in, self.spatial, 0..self.rows * self.spatial);
        let wide = (self.params)(moments);
        let Some((shift, scale, offset)) = wide.narrow() else {
            for n in 0..self.rows {
                (self.row_out)(n).map_scalar(|_, x| wide.y(x, false));
            }
            return moments;
        };
        for n in 0..self.rows {
            let mut row = (self.row_out)(n);
            if self.prefetch_next {
                let next = row.input_ptr().wrapping_add(self.spatial);
                for line in (0..self.spatial).step_by(64 / X::BYTES) {
                    V::prefetch(next.wrapping_add(line));
                }
            }
            affine_span::<V, _, _, false>(&mut row, shift, scale, offset, self.stream);
        }
        if self.stream {
            V::fence_streams();
        }
        moments
    }
}
