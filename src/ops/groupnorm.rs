//! Group normalization.
//!
//! The `C` channels are split into `groups` consecutive groups of `C / groups` channels; per
//! batch item `n` and group `g`, the mean and biased variance are taken over the group's
//! `C / groups * spatial` values, and `y = gamma[c] * (x - mean) * invstd + beta[c]` with
//! `invstd = 1 / sqrt(var + eps)`. Saved statistics have length `batch * groups`, index
//! `n * groups + g`.
//!
//! Sizes: `groups` must be at least 1 and divide `C` (else `BadShape`). The forward needs every
//! group to hold at least one value (`C / groups * spatial >= 1` when `batch * groups > 0`,
//! else `BadShape`); a call without groups (`batch == 0`) does nothing. The backward accepts
//! empty groups: its reductions over no values give zeros.
//!
//! Statistics: a channels-first group is one contiguous run of values, reduced like a batch-norm
//! channel (shifted `f32` block sums merged in `f64`); channels-innermost, each channel's moments
//! over the spatial rows are merged per group with Chan's formula in `f64`, channels in order.
//! Work is split by the shape alone and merged in a fixed order: results do not depend on the
//! thread count.

use super::{RowParts, TASK_ELEMENTS};
use crate::context::Context;
use crate::error::{Error, Result, check_eps, check_len};
use crate::io::{InOut, SharedIo};
use crate::kernels::backward::{WideGrad, apply_wide_cyclic};
use crate::kernels::groupnorm::{
    GradSums, NcsGradApply, NcsGradSums, NcsGroupForward, NcsRows, NscGradApply, NscGradSums,
};
use crate::kernels::moments::{ChannelMoments, Moments, ROW_BLOCK, RowMoments};
use crate::kernels::normalize::{NscAffine, WideAffine, narrow_all, with_channel_affine};
use crate::kernels::with_line_arrays;
use crate::scratch;
use crate::shape::{Layout, Shape, checked_elements};
use crate::simd::dispatch;
use crate::simd::element::Element;

pub use crate::io::BackwardIo;
use crate::ops::batchnorm::check_affine;
pub use crate::ops::batchnorm::{Affine, SavedStats};

/// Elements of one channels-first group processed as one unit: a group of at most this many
/// values is normalized right after its statistics, while it is in cache; larger groups are
/// reduced in chunks of this size, merged in order, then normalized in a second pass.
const GROUP_CHUNK: usize = 1 << 18;

// ---------------------------------------------------------------------------------------------
// Validation, in the order of the C contract: overflow, shape, argument.

/// Checks the sizes of a group-norm call: overflow of the tensor, of the per-channel arrays and
/// of the saved statistics (`batch * groups`), then the groups (at least 1, dividing C; for
/// `per_channel`, groups = C and no group check). Returns the number of groups.
fn check_sizes(shape: &Shape, groups: usize, per_channel: bool) -> Result<usize> {
    checked_elements(&[shape.channels], 4, "per-channel array")?;
    checked_elements(&[shape.batch, groups], 4, "saved statistics")?;
    shape.elements()?;
    if !per_channel && (groups == 0 || !shape.channels.is_multiple_of(groups)) {
        return Err(Error::bad_shape(format!(
            "groups must be at least 1 and divide the {} channels, got {groups}",
            shape.channels
        )));
    }
    Ok(groups)
}

/// Checks a forward with `groups` groups (`per_channel`: instance norm, groups = C).
pub(crate) fn check_forward(
    shape: &Shape,
    groups: usize,
    eps: f32,
    per_channel: bool,
) -> Result<()> {
    check_sizes(shape, groups, per_channel)?;
    if shape.batch > 0 && groups > 0 && (shape.channels == 0 || shape.spatial == 0) {
        return Err(Error::bad_shape(
            "every group needs at least one value (channels / groups * spatial >= 1)",
        ));
    }
    check_eps(eps)
}

/// Checks a backward with `groups` groups.
pub(crate) fn check_backward(shape: &Shape, groups: usize) -> Result<()> {
    check_sizes(shape, groups, false).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Public operations.

/// Group norm forward: statistics per (batch item, group), normalization with `gamma`, `beta`
/// per channel (optional), and the saved mean and inverse standard deviation (optional, length
/// `batch * groups`). Data of any [`Element`] type (bf16, f16: widened on load, outputs rounded
/// once; statistics those of the f32 call on the widened input).
pub fn forward<E: Element>(
    ctx: &Context,
    shape: Shape,
    groups: usize,
    io: InOut<'_, E>,
    affine: Affine<'_>,
    eps: f32,
    saved: SavedStats<'_>,
) -> Result<()> {
    check_forward(&shape, groups, eps, false)?;
    forward_checked(ctx, shape, groups, io, affine, eps, saved)
}

/// The forward after the size and argument checks (shared with instance norm).
pub(crate) fn forward_checked<E: Element>(
    ctx: &Context,
    shape: Shape,
    groups: usize,
    mut io: InOut<'_, E>,
    affine: Affine<'_>,
    eps: f32,
    saved: SavedStats<'_>,
) -> Result<()> {
    let elements = shape.elements()?;
    check_len("x", io.input(), elements)?;
    check_affine(&affine, shape.channels)?;
    let saves = shape.batch * groups;
    if let Some(m) = &saved.mean {
        check_len("save_mean", m, saves)?;
    }
    if let Some(s) = &saved.invstd {
        check_len("save_invstd", s, saves)?;
    }
    if elements == 0 {
        return Ok(());
    }
    let stats = forward_data(ctx, &shape, groups, &mut io, affine, eps);
    let SavedStats { mean, invstd } = saved;
    if let Some(out) = mean {
        for (o, s) in out.iter_mut().zip(&stats) {
            *o = s.mean as f32;
        }
    }
    if let Some(out) = invstd {
        for (o, s) in out.iter_mut().zip(&stats) {
            *o = s.invstd as f32;
        }
    }
    Ok(())
}

/// Group norm backward from the saved statistics (required, length `batch * groups`): the input
/// gradient (if `grad` carries `dx`), `dgamma = sum(dy * xhat)` and `dbeta = sum(dy)` per channel
/// (each optional; zeros over no values). Per (batch item, group), with `g = dy * gamma[c]`:
/// `dx = invstd * (g - mean(g) - xhat * mean(g * xhat))`. Data (`x`, `dy`,
/// `dx`) of any [`Element`] type.
///
/// A group whose saved `invstd` is `+inf` is one whose inverse spread exceeds the largest `f32`
/// (values far below 1 with `eps = 0`), which the forward normalized in `f64`: the backward
/// recomputes the forward's `f64` statistics of the groups from `x` and uses them for such a
/// group (its gradient then in `f64`).
#[allow(clippy::too_many_arguments)]
pub fn backward<E: Element>(
    ctx: &Context,
    shape: Shape,
    groups: usize,
    x: &[E],
    mut grad: BackwardIo<'_, E>,
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
) -> Result<()> {
    check_backward(&shape, groups)?;
    let elements = shape.elements()?;
    let c = shape.channels;
    check_len("x", x, elements)?;
    check_len("dy", grad.dy(), elements)?;
    if let Some(g) = gamma {
        check_len("gamma", g, c)?;
    }
    check_len("save_mean", save_mean, shape.batch * groups)?;
    check_len("save_invstd", save_invstd, shape.batch * groups)?;
    if let Some(d) = &dgamma {
        check_len("dgamma", d, c)?;
    }
    if let Some(d) = &dbeta {
        check_len("dbeta", d, c)?;
    }
    let exact = if elements == 0 {
        Vec::new()
    } else {
        overflowed_groups(ctx, &shape, groups, x, save_invstd)
    };
    let stats = GroupStats {
        groups,
        per_group: c / groups,
        mean: save_mean,
        invstd: save_invstd,
        exact: &exact,
    };
    let mut sums = if elements == 0 {
        vec![GradSums::default(); shape.batch * c]
    } else {
        grad_sums(ctx, &shape, &stats, x, grad.dy())
    };
    stats.recenter(&mut sums, c);
    // dgamma and dbeta: batch items added in order, per channel; zeros over no values.
    if let Some(out) = dgamma {
        for (ch, o) in out.iter_mut().enumerate() {
            if elements == 0 {
                *o = 0.0;
                continue;
            }
            let total = (0..shape.batch)
                .map(|n| stats.invstd(n, ch) * sums[n * c + ch].dy_x)
                .fold(0.0f64, |a, b| a + b);
            *o = total as f32;
        }
    }
    if let Some(out) = dbeta {
        for (ch, o) in out.iter_mut().enumerate() {
            // From +0.0: a sum over no values is +0.0 (`Iterator::sum` would start at -0.0).
            let total = (0..shape.batch)
                .map(|n| sums[n * c + ch].dy)
                .fold(0.0f64, |a, b| a + b);
            *o = total as f32;
        }
    }
    if let BackwardIo::WithDx(io) = &mut grad
        && elements > 0
    {
        let coefficients = grad_coefficients(&shape, &stats, gamma, &sums);
        apply_grad(ctx, &shape, x, io, &coefficients);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Forward data path.

/// Statistics of one (batch item, group).
#[derive(Clone, Copy, Debug)]
struct Stat {
    mean: f64,
    invstd: f64,
}

fn stat_of(m: Moments, eps: f32) -> Stat {
    let var = m.m2 / m.count as f64;
    let var = if var < 0.0 { 0.0 } else { var };
    Stat {
        mean: m.mean,
        invstd: 1.0 / (var + eps as f64).sqrt(),
    }
}

/// The affine map of channel `c` in a group with statistics `s`, in `f64` (the kernels narrow
/// it to `f32` where it fits, see [`WideAffine::narrow`]).
fn channel_params(s: Stat, affine: &Affine<'_>, c: usize) -> WideAffine {
    WideAffine {
        mean: s.mean,
        scale: affine.gamma.map_or(1.0, |g| g[c]) as f64 * s.invstd,
        beta: affine.beta.map_or(0.0, |b| b[c]) as f64,
    }
}

/// Normalizes `io` (non-empty) and returns the statistics per (batch item, group).
fn forward_data<E: Element>(
    ctx: &Context,
    shape: &Shape,
    groups: usize,
    io: &mut InOut<'_, E>,
    affine: Affine<'_>,
    eps: f32,
) -> Vec<Stat> {
    if fused(shape, groups) {
        return fused_ncs(ctx, shape, groups, io, affine, eps);
    }
    let moments = unfused_moments(ctx, shape, groups, io.input());
    let stats: Vec<Stat> = moments.into_iter().map(|m| stat_of(m, eps)).collect();
    normalize(ctx, shape, groups, io, affine, &stats);
    stats
}

/// Whether the forward takes each group in one visit ([`fused_ncs`]): channels first, groups of
/// at most [`GROUP_CHUNK`] values.
fn fused(shape: &Shape, groups: usize) -> bool {
    !shape.channels_innermost() && shape.channels / groups * shape.spatial <= GROUP_CHUNK
}

/// The moments per (batch item, group) of a forward that does not take each group in one visit.
fn unfused_moments<E: Element>(
    ctx: &Context,
    shape: &Shape,
    groups: usize,
    x: &[E],
) -> Vec<Moments> {
    let run = shape.channels / groups * shape.spatial;
    if shape.layout == Layout::Ncs || shape.spatial == 1 {
        run_moments(ctx, shape.batch * groups, run, x)
    } else {
        nsc_group_moments(ctx, shape, groups, x)
    }
}

/// The moments per (batch item, group) of `x` (not empty), bitwise as the forward computes them
/// (on the same ISA): [`fused_ncs`]'s moments of each group's rows, or [`unfused_moments`].
fn forward_moments<E: Element>(
    ctx: &Context,
    shape: &Shape,
    groups: usize,
    x: &[E],
) -> Vec<Moments> {
    if !fused(shape, groups) {
        return unfused_moments(ctx, shape, groups, x);
    }
    let (c, s) = (shape.channels, shape.spatial);
    let per_group = c / groups;
    let isa = ctx.supported_isa();
    ctx.map(x.len(), shape.batch * groups, |i| {
        let first = (i / groups) * c + (i % groups) * per_group;
        let row = |r: usize| &x[(first + r) * s..(first + r + 1) * s];
        dispatch(
            isa,
            ChannelMoments {
                row: &row,
                spatial: s,
                range: 0..per_group * s,
            },
        )
    })
}

/// Moments of `runs` contiguous runs of `run` values each (channels-first groups, or groups of
/// an `(N, C)` matrix), in chunks of [`GROUP_CHUNK`] merged in order.
fn run_moments<E: Element>(ctx: &Context, runs: usize, run: usize, x: &[E]) -> Vec<Moments> {
    let isa = ctx.supported_isa();
    let chunks = run.div_ceil(GROUP_CHUNK);
    let partials = ctx.map(x.len(), runs * chunks, |i| {
        let (r, k) = (i / chunks, i % chunks);
        let row = |_: usize| &x[r * run..(r + 1) * run];
        dispatch(
            isa,
            ChannelMoments {
                row: &row,
                spatial: run,
                range: k * GROUP_CHUNK..run.min((k + 1) * GROUP_CHUNK),
            },
        )
    });
    partials
        .chunks(chunks)
        .map(|p| p.iter().fold(Moments::EMPTY, |a, &b| a.merge(b)))
        .collect()
}

/// Rows per chunk of a channels-innermost pass over `rows` rows of `channels` values.
fn row_chunk(channels: usize) -> usize {
    TASK_ELEMENTS.div_ceil(channels).next_multiple_of(ROW_BLOCK)
}

/// Channels-innermost group moments: per batch item, each channel's moments over the spatial
/// rows (chunks of whole row blocks merged in order), then the channels of each group merged in
/// order.
fn nsc_group_moments<E: Element>(
    ctx: &Context,
    shape: &Shape,
    groups: usize,
    x: &[E],
) -> Vec<Moments> {
    let (c, s) = (shape.channels, shape.spatial);
    let isa = ctx.supported_isa();
    let chunk = row_chunk(c);
    let chunks = s.div_ceil(chunk);
    let mut partials = scratch::take(shape.batch * chunks * c, Moments::EMPTY);
    ctx.for_each_part(x.len(), &mut partials, c, |i, out| {
        let (n, k) = (i / chunks, i % chunks);
        let rows = k * chunk..s.min((k + 1) * chunk);
        dispatch(
            isa,
            RowMoments {
                x: &x[(n * s + rows.start) * c..(n * s + rows.end) * c],
                channels: c,
                out,
            },
        );
    });
    let per_group = c / groups;
    let mut result = Vec::with_capacity(shape.batch * groups);
    let mut channels = vec![Moments::EMPTY; c];
    for n in 0..shape.batch {
        channels.fill(Moments::EMPTY);
        for p in partials[n * chunks * c..(n + 1) * chunks * c].chunks(c) {
            Moments::merge_each(&mut channels, p);
        }
        for g in 0..groups {
            let members = &channels[g * per_group..(g + 1) * per_group];
            result.push(members.iter().fold(Moments::EMPTY, |a, &b| a.merge(b)));
        }
    }
    result
}

/// Channels-first forward with groups of at most [`GROUP_CHUNK`] values: one task per (batch
/// item, group) computes the group's moments and normalizes it while it is in cache.
fn fused_ncs<E: Element>(
    ctx: &Context,
    shape: &Shape,
    groups: usize,
    io: &mut InOut<'_, E>,
    affine: Affine<'_>,
    eps: f32,
) -> Vec<Stat> {
    let (c, s) = (shape.channels, shape.spatial);
    let per_group = c / groups;
    let isa = ctx.supported_isa();
    let elements = io.len();
    let shared: SharedIo<'_, E> = io.share();
    ctx.map(elements, shape.batch * groups, |i| {
        let (n, g) = (i / groups, i % groups);
        let first = n * c + g * per_group;
        let range = |r: usize| (first + r) * s..(first + r + 1) * s;
        // SAFETY: this task alone touches the rows of group (n, g). Its input slices are used
        // only for the moments, before the rows are written through `row_out`.
        let row_in = |r: usize| unsafe { shared.input(range(r)) };
        // SAFETY: as above; one row is written at a time.
        let row_out = |r: usize| unsafe { shared.part(range(r)) };
        let params =
            |m: Moments, r: usize| channel_params(stat_of(m, eps), &affine, g * per_group + r);
        let m = dispatch(
            isa,
            NcsGroupForward {
                rows: per_group,
                spatial: s,
                row_in: &row_in,
                row_out: &row_out,
                params: &params,
            },
        );
        stat_of(m, eps)
    })
}

/// Normalizes `io` with the statistics per (batch item, group), in parallel parts of about
/// [`TASK_ELEMENTS`] whole rows.
fn normalize<E: Element>(
    ctx: &Context,
    shape: &Shape,
    groups: usize,
    io: &mut InOut<'_, E>,
    affine: Affine<'_>,
    stats: &[Stat],
) {
    let (c, s) = (shape.channels, shape.spatial);
    let per_group = c / groups;
    let elements = io.len();
    let isa = ctx.supported_isa();
    let innermost = shape.channels_innermost();
    let parts = RowParts::new(elements, shape.row_len());
    let shared = io.share();
    ctx.for_each(elements, parts.tasks(), |k| {
        let r = parts.rows(k);
        if innermost {
            // Rows of C values; row `r` belongs to batch item `r / spatial`.
            let mut row = r.start;
            while row < r.end {
                let n = row / s;
                let end = r.end.min((n + 1) * s);
                let fill = |shift: &mut [f32], scale: &mut [f32], offset: &mut [f32]| {
                    let wide =
                        |ch: usize| channel_params(stats[n * groups + ch / per_group], &affine, ch);
                    narrow_all(wide, shift, scale, offset)
                };
                // SAFETY: tasks cover disjoint row ranges.
                let part = unsafe { shared.part(row * c..end * c) };
                with_channel_affine(c, fill, |params| {
                    dispatch(
                        isa,
                        NscAffine {
                            io: part,
                            channels: c,
                            params,
                            relu: false,
                            stream: false,
                        },
                    )
                });
                row = end;
            }
        } else {
            // Rows of `spatial` values; row `r` is channel `r % C` of batch item `r / C`.
            let params = |row: usize| {
                let (n, ch) = (row / c, row % c);
                channel_params(stats[n * groups + ch / per_group], &affine, ch)
            };
            // SAFETY: tasks cover disjoint row ranges.
            let part = unsafe { shared.part(r.start * s..r.end * s) };
            dispatch(
                isa,
                NcsRows {
                    io: part,
                    first_row: r.start,
                    spatial: s,
                    params: &params,
                },
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Backward data path.

/// The forward's statistics of every (batch item, group) (not empty) if some group's saved
/// `invstd` is `+inf`, else nothing (the usual case: one scan of the saved values). Such an
/// `invstd` exceeds the largest `f32`, so `var + eps < 2^-256`, which the smallest positive
/// `eps` (`2^-149`) rules out: the forward had `eps = 0`, and normalized the group in `f64` with
/// statistics its saved `f32` ones cannot represent. They are recomputed here, bitwise as the
/// forward computed them (on the same ISA).
fn overflowed_groups<E: Element>(
    ctx: &Context,
    shape: &Shape,
    groups: usize,
    x: &[E],
    save_invstd: &[f32],
) -> Vec<Stat> {
    if !save_invstd.contains(&f32::INFINITY) {
        return Vec::new();
    }
    let moments = forward_moments(ctx, shape, groups, x);
    moments.into_iter().map(|m| stat_of(m, 0.0)).collect()
}

/// Saved statistics of a backward.
struct GroupStats<'a> {
    groups: usize,
    per_group: usize,
    mean: &'a [f32],
    invstd: &'a [f32],
    /// See [`overflowed_groups`]: used for the groups whose saved `invstd` is `+inf`.
    exact: &'a [Stat],
}

impl GroupStats<'_> {
    fn index(&self, n: usize, c: usize) -> usize {
        n * self.groups + c / self.per_group
    }

    /// The saved mean of the group of channel `c`: the shift of the gradient sums.
    fn mean(&self, n: usize, c: usize) -> f32 {
        self.mean[self.index(n, c)]
    }

    fn invstd(&self, n: usize, c: usize) -> f64 {
        self.group(self.index(n, c)).1
    }

    /// The statistics the backward uses for group `i`, as `(delta, invstd)` with the group's
    /// mean `save_mean[i] + delta`: the saved ones (`delta` `None`, the mean is the saved one),
    /// or for a group whose saved `invstd` is `+inf`, the forward's `f64` ones (see
    /// [`overflowed_groups`]).
    fn group(&self, i: usize) -> (Option<f64>, f64) {
        match self.exact.get(i) {
            Some(e) if self.invstd[i] == f32::INFINITY => {
                (Some(e.mean - self.mean[i] as f64), e.invstd)
            }
            _ => (None, self.invstd[i] as f64),
        }
    }

    /// Turns the sums of the groups that use the forward's `f64` mean (see [`GroupStats::group`])
    /// into sums about it: `sum(dy * (x - mean - delta)) = sum(dy * (x - mean)) - delta *
    /// sum(dy)`. `sums` is indexed `n * C + c`.
    fn recenter(&self, sums: &mut [GradSums], c: usize) {
        if self.exact.is_empty() {
            return;
        }
        for (j, q) in sums.iter_mut().enumerate() {
            if let (Some(delta), _) = self.group(self.index(j / c, j % c)) {
                q.dy_x -= delta * q.dy;
            }
        }
    }
}

/// Per (batch item, channel), index `n * C + c`: `sum(dy)` and `sum(dy * (x - mean))` over the
/// spatial positions, with `mean` the saved mean of the channel's group.
fn grad_sums<E: Element>(
    ctx: &Context,
    shape: &Shape,
    stats: &GroupStats<'_>,
    x: &[E],
    dy: &[E],
) -> Vec<GradSums> {
    let (b, c, s) = (shape.batch, shape.channels, shape.spatial);
    let isa = ctx.supported_isa();
    if shape.layout == Layout::Ncs && s > 1 {
        // Rows of `spatial` values, row `n * C + c`; each row's sums are the same whatever the
        // task holding it.
        let split = RowParts::new(b * c * s, s);
        let parts = ctx.map(x.len(), split.tasks(), |k| {
            let r = split.rows(k);
            let span = split.span(&r);
            let mut out = vec![GradSums::default(); r.len()];
            let shift = |row: usize| stats.mean(row / c, row % c);
            dispatch(
                isa,
                NcsGradSums {
                    x: &x[span.clone()],
                    dy: &dy[span],
                    first_row: r.start,
                    spatial: s,
                    shift: &shift,
                    out: &mut out,
                },
            );
            out
        });
        parts.concat()
    } else {
        // Channels innermost: per batch item, chunks of whole row blocks, added in order.
        let chunk = row_chunk(c);
        let chunks = s.div_ceil(chunk);
        let parts: Vec<Vec<GradSums>> = ctx.map(x.len(), b * chunks, |i| {
            let (n, k) = (i / chunks, i % chunks);
            let rows = k * chunk..s.min((k + 1) * chunk);
            let shift: Vec<f32> = (0..c).map(|ch| stats.mean(n, ch)).collect();
            let mut out = vec![GradSums::default(); c];
            let span = (n * s + rows.start) * c..(n * s + rows.end) * c;
            dispatch(
                isa,
                NscGradSums {
                    x: &x[span.clone()],
                    dy: &dy[span],
                    channels: c,
                    shift: &shift,
                    out: &mut out,
                },
            );
            out
        });
        let mut sums = vec![GradSums::default(); b * c];
        for n in 0..b {
            let total = &mut sums[n * c..(n + 1) * c];
            for p in &parts[n * chunks..(n + 1) * chunks] {
                for (t, q) in total.iter_mut().zip(p) {
                    t.dy += q.dy;
                    t.dy_x += q.dy_x;
                }
            }
        }
        sums
    }
}

/// The input-gradient coefficients per (batch item, channel), index `n * C + c`.
fn grad_coefficients(
    shape: &Shape,
    stats: &GroupStats<'_>,
    gamma: Option<&[f32]>,
    sums: &[GradSums],
) -> Vec<WideGrad> {
    let (c, groups, per_group) = (shape.channels, stats.groups, stats.per_group);
    let count = (per_group * shape.spatial) as f64;
    let gamma_of = |ch: usize| gamma.map_or(1.0, |g| g[ch] as f64);
    let mut out = vec![WideGrad::default(); shape.batch * c];
    for n in 0..shape.batch {
        for g in 0..groups {
            let i = n * groups + g;
            let (delta, invstd) = stats.group(i);
            let mean = stats.mean[i];
            let channels = g * per_group..(g + 1) * per_group;
            // mean(g) and mean(g * xhat) over the group, channels added in order.
            let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
            for ch in channels.clone() {
                let q = sums[n * c + ch];
                sum_g += gamma_of(ch) * q.dy;
                sum_gx += gamma_of(ch) * q.dy_x;
            }
            let mean_g = sum_g / count;
            let mean_gx = invstd * sum_gx / count;
            let b = -invstd * invstd * mean_gx;
            // About the saved mean: `(x - mean - delta) * b = (x - mean) * b - delta * b`.
            let k = -invstd * mean_g - delta.map_or(0.0, |d| d * b);
            for ch in channels {
                out[n * c + ch] = WideGrad {
                    mean,
                    a: invstd * gamma_of(ch),
                    b,
                    k,
                };
            }
        }
    }
    out
}

/// `dx = (x - mean) * b + (dy * a + k)` over the whole tensor, in parallel parts of about
/// [`TASK_ELEMENTS`] whole rows.
fn apply_grad<E: Element>(
    ctx: &Context,
    shape: &Shape,
    x: &[E],
    io: &mut InOut<'_, E>,
    coefficients: &[WideGrad],
) {
    let (c, s) = (shape.channels, shape.spatial);
    let elements = io.len();
    let isa = ctx.supported_isa();
    let innermost = shape.channels_innermost();
    let parts = RowParts::new(elements, shape.row_len());
    let shared = io.share();
    ctx.for_each(elements, parts.tasks(), |k| {
        let r = parts.rows(k);
        let span = parts.span(&r);
        // SAFETY: tasks cover disjoint row ranges.
        let part = unsafe { shared.part(span.clone()) };
        if innermost {
            let mut part = part;
            let mut row = r.start;
            // Each item's coefficients, on cache lines (on the stack for small `c`).
            with_line_arrays(c, |[mean, a, b, k]| {
                while row < r.end {
                    let n = row / s;
                    let end = r.end.min((n + 1) * s);
                    let item = &coefficients[n * c..(n + 1) * c];
                    let mut narrow = true;
                    for (ch, p) in item.iter().enumerate() {
                        match p.narrow() {
                            Some(p) => (mean[ch], a[ch], b[ch], k[ch]) = p,
                            None => narrow = false,
                        }
                    }
                    let local = (row - r.start) * c..(end - r.start) * c;
                    if !narrow {
                        // Coefficients beyond f32 (see WideGrad): this item's rows in f64.
                        apply_wide_cyclic(item, &x[row * c..end * c], &mut part.part(local));
                        row = end;
                        continue;
                    }
                    dispatch(
                        isa,
                        NscGradApply {
                            x: &x[row * c..end * c],
                            io: part.part(local),
                            channels: c,
                            mean,
                            a,
                            b,
                            k,
                        },
                    );
                    row = end;
                }
            });
        } else {
            let coefficients = |row: usize| coefficients[row];
            dispatch(
                isa,
                NcsGradApply {
                    x: &x[span],
                    io: part,
                    first_row: r.start,
                    spatial: s,
                    coefficients: &coefficients,
                },
            );
        }
    });
}
