//! Tensor shapes and layouts, with element counts checked for overflow.

use crate::error::{Error, Result};

/// Memory layout of a `(batch, channels, spatial)` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// Channels-first (NCHW): element `(n, c, s)` is at `(n * C + c) * S + s`.
    Ncs,
    /// Channels-last (NHWC): element `(n, c, s)` is at `(n * S + s) * C + c`.
    Nsc,
}

/// The shape of a tensor seen by a per-channel normalization.
///
/// `spatial` is the product of the spatial sizes (`H * W`, `D * H * W`, or 1 for an `(N, C)`
/// matrix). A per-channel statistic is taken over `batch * spatial` elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Images (or rows) in the batch: N.
    pub batch: usize,
    /// Channels: C, the axis a statistic is kept for.
    pub channels: usize,
    /// Elements per channel of one image: the product of the spatial sizes.
    pub spatial: usize,
    /// Where channels sit in memory.
    pub layout: Layout,
}

impl Shape {
    /// A shape of `batch * channels * spatial` elements in `layout`.
    pub fn new(batch: usize, channels: usize, spatial: usize, layout: Layout) -> Self {
        Shape {
            batch,
            channels,
            spatial,
            layout,
        }
    }

    /// `batch * channels * spatial`, or [`ErrorKind::Overflow`](crate::ErrorKind) when the
    /// product, or its size in bytes of `f32`, does not fit in memory (`isize::MAX` bytes).
    pub fn elements(&self) -> Result<usize> {
        checked_elements(&[self.batch, self.channels, self.spatial], 4, "tensor")
    }

    /// Elements per channel: `batch * spatial`.
    pub fn count(&self) -> Result<usize> {
        checked_elements(&[self.batch, self.spatial], 4, "channel")
    }

    /// The equivalent `(rows, channels)` view when channels are innermost in memory: every
    /// `Nsc` shape, and `Ncs` shapes with `spatial == 1`. `None` when channels are not innermost.
    pub(crate) fn channels_innermost(&self) -> bool {
        self.layout == Layout::Nsc || self.spatial == 1
    }

    /// The length of a contiguous row of one channel's values, or of one position's channels:
    /// `channels` when channels are innermost, else `spatial`.
    pub(crate) fn row_len(&self) -> usize {
        if self.channels_innermost() {
            self.channels
        } else {
            self.spatial
        }
    }
}

/// The product of `dims`, checked so that `product * elem_bytes <= isize::MAX`. A product with a
/// zero factor is zero whatever the other factors are.
pub(crate) fn checked_elements(dims: &[usize], elem_bytes: usize, what: &str) -> Result<usize> {
    if dims.contains(&0) {
        return Ok(0);
    }
    let limit = isize::MAX as usize / elem_bytes;
    let mut product: usize = 1;
    for &d in dims {
        product = product
            .checked_mul(d)
            .filter(|&p| p <= limit)
            .ok_or_else(|| {
                Error::overflow(format!("{what} size {dims:?} overflows the address space"))
            })?;
    }
    Ok(product)
}
