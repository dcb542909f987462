/* normkit's normalizations as ggml custom ops.
 *
 * Each function adds one node to a ggml graph; ggml's own threads run it: thread `ith` of `nth`
 * takes a contiguous share of the rows (or of the (sample, group) pairs of a group norm) and
 * calls normkit on it with a one-thread context, which runs on the calling thread, so no second
 * thread pool exists. The split only chooses which thread computes which row or group: results
 * are bitwise the same for any thread count.
 *
 * Data tensors may be GGML_TYPE_F32, GGML_TYPE_BF16 or GGML_TYPE_F16: half-precision tensors
 * are read and written directly (no cast nodes). Rows run along ne[0] and must be packed
 * (nb[0] = element size); nb[1..3] may be anything (views). `weight` and `bias` are optional
 * (NULL), F32 and contiguous: the ggml_mul and ggml_add that follow ggml's own norms, done in the
 * same pass. Statistics are exact to float rounding of the data's
 * spread, not of its offset: rows of 10000 + N(0,1) normalize to within 1e-4 of float64 (normkit's
 * contract; check.c measures below 1e-6), where ggml's own norms lose about 1e-3.
 *
 * Needs a 64-bit target: eps and the op's options travel in the op's userdata pointer, so the
 * nodes own no memory. A failing normkit call aborts through ggml_abort, as ggml's own ops do.
 */
#ifndef NORMKIT_GGML_H
#define NORMKIT_GGML_H

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

/* RMS norm over ne[0]: y = x / sqrt(mean(x^2) + eps) * weight. ggml_rms_norm (then ggml_mul). */
struct ggml_tensor *nkg_rms_norm(struct ggml_context *ctx, struct ggml_tensor *a,
                                 struct ggml_tensor *weight, float eps);

/* Layer norm over ne[0]: y = (x - mean) / sqrt(var + eps) * weight + bias. ggml_norm (then
 * ggml_mul, ggml_add). */
struct ggml_tensor *nkg_norm(struct ggml_context *ctx, struct ggml_tensor *a,
                             struct ggml_tensor *weight, struct ggml_tensor *bias, float eps);

/* Group norm of a (W, H, C, N) tensor: the C channels (ne[2]) in n_groups consecutive groups,
 * statistics per (sample, group) over W*H*C/n_groups values; weight and bias have C values.
 * n_groups must divide C, and each sample's (W, H, C) block must be contiguous. As
 * ggml_group_norm (then ggml_mul, ggml_add with per-channel tensors). */
struct ggml_tensor *nkg_group_norm(struct ggml_context *ctx, struct ggml_tensor *a, int n_groups,
                                   struct ggml_tensor *weight, struct ggml_tensor *bias,
                                   float eps);

/* Fused residual add + RMS norm: h = a + residual (each widened to float, added in float) is
 * rounded to residual's type and returned in *sum (the new residual stream), and the RMS norm
 * of that rounded h, times weight, is returned. a and residual have the same shape; both
 * results have residual's type and a's shape. One pass instead of ggml_add then ggml_rms_norm. */
struct ggml_tensor *nkg_add_rms_norm(struct ggml_context *ctx, struct ggml_tensor *a,
                                     struct ggml_tensor *residual, struct ggml_tensor *weight,
                                     float eps, struct ggml_tensor **sum);

#ifdef __cplusplus
}
#endif

#endif
