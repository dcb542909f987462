/* normkit's normalizations as ggml custom ops: see normkit_ggml.h. */
#include "normkit_ggml.h"

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "normkit.h"

_Static_assert(sizeof(void *) >= 8, "normkit_ggml packs eps and options into the userdata pointer");

enum { HAS_WEIGHT = 1u, HAS_BIAS = 2u, GROUPS_SHIFT = 2 };

static void *pack(float eps, uint32_t options) {
    uint32_t bits;
    memcpy(&bits, &eps, sizeof bits);
    return (void *)(uintptr_t)(((uint64_t)options << 32) | bits);
}

static float unpack_eps(const void *userdata) {
    uint32_t bits = (uint32_t)(uintptr_t)userdata;
    float eps;
    memcpy(&eps, &bits, sizeof eps);
    return eps;
}

static uint32_t unpack_options(const void *userdata) {
    return (uint32_t)((uint64_t)(uintptr_t)userdata >> 32);
}

/* One context for every ggml thread: a one-thread context runs each call on the calling thread
 * (it has no pool), and calls on one context may run concurrently. Created when the first node is
 * built, so that ggml's threads only read it. */
static _Atomic(nk_context *) shared_context;

static nk_context *context(void) {
    nk_context *ctx = atomic_load_explicit(&shared_context, memory_order_acquire);
    if (ctx != NULL) {
        return ctx;
    }
    nk_context *mine = NULL;
    nk_status s = nk_context_create(1, &mine);
    if (s != NK_OK) {
        GGML_ABORT("normkit: %s: %s", nk_status_string(s), nk_last_error_message());
    }
    nk_context *expected = NULL;
    if (!atomic_compare_exchange_strong(&shared_context, &expected, mine)) {
        nk_context_destroy(mine);
        return expected;
    }
    return mine;
}

static void check(nk_status s) {
    if (s != NK_OK) {
        GGML_ABORT("normkit: %s: %s", nk_status_string(s), nk_last_error_message());
    }
}

static nk_dtype dtype_of(const struct ggml_tensor *t) {
    switch (t->type) {
    case GGML_TYPE_F32: return NK_DTYPE_F32;
    case GGML_TYPE_BF16: return NK_DTYPE_BF16;
    case GGML_TYPE_F16: return NK_DTYPE_F16;
    default: GGML_ABORT("normkit: %s is %s; F32, BF16 or F16 wanted", t->name, ggml_type_name(t->type));
    }
}

/* A data tensor: a supported type, packed rows, strides in whole elements. */
static void check_data(const struct ggml_tensor *t) {
    size_t es = ggml_type_size(t->type);
    (void)dtype_of(t);
    GGML_ASSERT(t->nb[0] == es);
    GGML_ASSERT(t->nb[1] % es == 0 && t->nb[2] % es == 0 && t->nb[3] % es == 0);
}

/* weight or bias: absent, or n contiguous floats. */
static void check_param(const struct ggml_tensor *p, int64_t n) {
    if (p != NULL) {
        GGML_ASSERT(p->type == GGML_TYPE_F32 && ggml_is_contiguous(p) && ggml_nelements(p) == n);
    }
}

static void check_eps(float eps) {
    GGML_ASSERT(isfinite(eps) && eps >= 0.0f);
}

/* Rows r, r+1, ... of t (rows: the ne[1]*ne[2]*ne[3] vectors along ne[0]) as normkit rows. */
static nk_rows rows_at(const struct ggml_tensor *t, int64_t r) {
    int64_t i1 = r % t->ne[1];
    int64_t i2 = (r / t->ne[1]) % t->ne[2];
    int64_t i3 = r / (t->ne[1] * t->ne[2]);
    nk_rows rows = {(char *)t->data + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3], dtype_of(t),
                    t->nb[1] / ggml_type_size(t->type)};
    return rows;
}

/* How many rows from r (at most end - r) are evenly spaced in t, nb[1] apart. */
static int64_t run_length(const struct ggml_tensor *t, int64_t r, int64_t end) {
    if (t->nb[1] < (size_t)t->ne[0] * ggml_type_size(t->type)) {
        return 1; /* overlapping rows (a broadcast view): one at a time */
    }
    int ne1_uniform = t->ne[2] == 1 || t->nb[2] == t->ne[1] * t->nb[1];
    int ne2_uniform = t->ne[3] == 1 || t->nb[3] == t->ne[2] * t->nb[2];
    if (ne1_uniform && ne2_uniform) {
        return end - r;
    }
    int64_t slice_end = (r / t->ne[1] + 1) * t->ne[1];
    return (slice_end < end ? slice_end : end) - r;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Thread ith of nth takes items [*begin, *end) of count: contiguous runs of whole grains (so that
 * a small tensor stays on one thread: handing it to another costs more than the work), the larger
 * shares first (thread 0, which runs the graph, is awake). Which thread computes an item never
 * changes its result. */
static void share(int64_t count, int64_t grain, int ith, int nth, int64_t *begin, int64_t *end) {
    int64_t units = (count + grain - 1) / grain;
    *begin = min64(count, (units * ith + nth - 1) / nth * grain);
    *end = min64(count, (units * (ith + 1) + nth - 1) / nth * grain);
}

/* Items of `bytes` each per grain: about 32 KiB of input. */
static int64_t grain_of(size_t bytes) {
    int64_t grain = (int64_t)((32u << 10) / (bytes ? bytes : 1));
    return grain > 0 ? grain : 1;
}

static nk_rows packed_if_one(nk_rows rows, int64_t n) {
    if (n == 1) {
        rows.stride = 0;
    }
    return rows;
}

/* Packed rows of one type: the plain functions (bitwise the rows functions without residual). */
static nk_status packed_rows(nk_context *ctx, int layer, size_t rows, size_t cols, nk_rows x, nk_rows y,
                             const float *weight, const float *bias, float eps) {
    switch (x.dtype) {
    case NK_DTYPE_BF16:
        return layer ? nk_layernorm_forward_bf16(ctx, rows, cols, x.data, y.data, weight, bias, eps, NULL, NULL)
                     : nk_rmsnorm_forward_bf16(ctx, rows, cols, x.data, y.data, weight, eps, NULL);
    case NK_DTYPE_F16:
        return layer ? nk_layernorm_forward_f16(ctx, rows, cols, x.data, y.data, weight, bias, eps, NULL, NULL)
                     : nk_rmsnorm_forward_f16(ctx, rows, cols, x.data, y.data, weight, eps, NULL);
    default:
        return layer ? nk_layernorm_forward(ctx, rows, cols, x.data, y.data, weight, bias, eps, NULL, NULL)
                     : nk_rmsnorm_forward(ctx, rows, cols, x.data, y.data, weight, eps, NULL);
    }
}

static void rows_op(struct ggml_tensor *dst, int ith, int nth, void *userdata, int layer) {
    const struct ggml_tensor *a = dst->src[0];
    uint32_t options = unpack_options(userdata);
    int arg = 1;
    const float *weight = (options & HAS_WEIGHT) ? (const float *)dst->src[arg++]->data : NULL;
    const float *bias = (options & HAS_BIAS) ? (const float *)dst->src[arg++]->data : NULL;
    nk_rows none = {NULL, NK_DTYPE_F32, 0};
    nk_context *ctx = context();
    size_t cols = (size_t)a->ne[0];
    float eps = unpack_eps(userdata);
    int64_t r, end;
    share(ggml_nrows(a), grain_of(cols * ggml_type_size(a->type)), ith, nth, &r, &end);
    while (r < end) {
        int64_t n = min64(run_length(a, r, end), run_length(dst, r, end));
        nk_rows x = packed_if_one(rows_at(a, r), n), y = packed_if_one(rows_at(dst, r), n);
        if ((x.stride == 0 || x.stride == cols) && (y.stride == 0 || y.stride == cols)) {
            check(packed_rows(ctx, layer, (size_t)n, cols, x, y, weight, bias, eps)); /* fewer checks */
        } else if (layer) {
            check(nk_layernorm_forward_rows(ctx, (size_t)n, cols, x, none, NULL, none, y, weight, bias, eps,
                                            NULL, NULL, NULL));
        } else {
            check(nk_rmsnorm_forward_rows(ctx, (size_t)n, cols, x, none, NULL, none, y, weight, eps, NULL,
                                          NULL));
        }
        r += n;
    }
}

static void rms_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    rows_op(dst, ith, nth, userdata, 0);
}

static void layer_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    rows_op(dst, ith, nth, userdata, 1);
}

/* The custom node of a norm over `a` (its shape and type): the optional weight and bias as its
 * further sources, flagged in `options` with eps; `fun` runs on ggml's threads. */
static struct ggml_tensor *norm_node(struct ggml_context *ctx, struct ggml_tensor *a,
                                     struct ggml_tensor *weight, struct ggml_tensor *bias, float eps,
                                     uint32_t options, ggml_custom_op_t fun) {
    check_eps(eps);
    (void)context();
    struct ggml_tensor *args[3] = {a};
    int n_args = 1;
    if (weight != NULL) {
        args[n_args++] = weight;
        options |= HAS_WEIGHT;
    }
    if (bias != NULL) {
        args[n_args++] = bias;
        options |= HAS_BIAS;
    }
    return ggml_custom_4d(ctx, a->type, a->ne[0], a->ne[1], a->ne[2], a->ne[3], args, n_args, fun,
                          GGML_N_TASKS_MAX, pack(eps, options));
}

static struct ggml_tensor *row_node(struct ggml_context *ctx, struct ggml_tensor *a,
                                    struct ggml_tensor *weight, struct ggml_tensor *bias, float eps,
                                    ggml_custom_op_t fun) {
    check_data(a);
    check_param(weight, a->ne[0]);
    check_param(bias, a->ne[0]);
    return norm_node(ctx, a, weight, bias, eps, 0, fun);
}

struct ggml_tensor *nkg_rms_norm(struct ggml_context *ctx, struct ggml_tensor *a,
                                 struct ggml_tensor *weight, float eps) {
    return row_node(ctx, a, weight, NULL, eps, rms_op);
}

struct ggml_tensor *nkg_norm(struct ggml_context *ctx, struct ggml_tensor *a,
                             struct ggml_tensor *weight, struct ggml_tensor *bias, float eps) {
    return row_node(ctx, a, weight, bias, eps, layer_op);
}

/* dst: (ne0, rows, 2): the normalized rows, then the sums. */
static void add_rms_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const struct ggml_tensor *a = dst->src[0], *residual = dst->src[1];
    const float *weight = (unpack_options(userdata) & HAS_WEIGHT) ? (const float *)dst->src[2]->data : NULL;
    int64_t rows = ggml_nrows(a), cols = a->ne[0];
    nk_dtype type = dtype_of(dst);
    nk_context *ctx = context();
    int64_t r, end;
    share(rows, grain_of((size_t)cols * ggml_type_size(a->type)), ith, nth, &r, &end);
    while (r < end) {
        int64_t n = min64(run_length(a, r, end), run_length(residual, r, end));
        nk_rows x = packed_if_one(rows_at(a, r), n), res = packed_if_one(rows_at(residual, r), n);
        nk_rows y = {(char *)dst->data + r * dst->nb[1], type, 0};
        nk_rows sum = {(char *)dst->data + (rows + r) * dst->nb[1], type, 0};
        check(nk_rmsnorm_forward_rows(ctx, (size_t)n, (size_t)cols, x, res, NULL, sum, y, weight,
                                      unpack_eps(userdata), NULL, NULL));
        r += n;
    }
}

struct ggml_tensor *nkg_add_rms_norm(struct ggml_context *ctx, struct ggml_tensor *a,
                                     struct ggml_tensor *residual, struct ggml_tensor *weight,
                                     float eps, struct ggml_tensor **sum) {
    check_data(a);
    check_data(residual);
    GGML_ASSERT(ggml_are_same_shape(a, residual));
    check_param(weight, a->ne[0]);
    check_eps(eps);
    GGML_ASSERT(sum != NULL);
    (void)context();
    struct ggml_tensor *args[3] = {a, residual, weight};
    int64_t rows = ggml_nrows(a);
    struct ggml_tensor *both =
        ggml_custom_4d(ctx, residual->type, a->ne[0], rows, 2, 1, args, weight ? 3 : 2, add_rms_op,
                       GGML_N_TASKS_MAX, pack(eps, weight ? HAS_WEIGHT : 0));
    size_t es = ggml_type_size(residual->type);
    size_t nb1 = (size_t)a->ne[0] * es, nb2 = nb1 * (size_t)a->ne[1], nb3 = nb2 * (size_t)a->ne[2];
    *sum = ggml_view_4d(ctx, both, a->ne[0], a->ne[1], a->ne[2], a->ne[3], nb1, nb2, nb3,
                        (size_t)rows * nb1);
    return ggml_view_4d(ctx, both, a->ne[0], a->ne[1], a->ne[2], a->ne[3], nb1, nb2, nb3, 0);
}

static void group_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const struct ggml_tensor *a = dst->src[0];
    uint32_t options = unpack_options(userdata);
    int arg = 1;
    const float *weight = (options & HAS_WEIGHT) ? (const float *)dst->src[arg++]->data : NULL;
    const float *bias = (options & HAS_BIAS) ? (const float *)dst->src[arg++]->data : NULL;
    int64_t groups = options >> GROUPS_SHIFT;
    int64_t per_group = a->ne[2] / groups;
    size_t spatial = (size_t)(a->ne[0] * a->ne[1]);
    float eps = unpack_eps(userdata);
    nk_context *ctx = context();
    int64_t item, end;
    share(a->ne[3] * groups, grain_of((size_t)per_group * spatial * ggml_type_size(a->type)), ith, nth, &item,
          &end);
    while (item < end) { /* items: (sample, group) pairs; one call per sample */
        int64_t n = item / groups, g0 = item % groups, g1 = min64(groups, g0 + (end - item));
        nk_shape shape = {1, (size_t)((g1 - g0) * per_group), spatial, NK_LAYOUT_NCS};
        const char *x = (const char *)a->data + n * a->nb[3] + g0 * per_group * a->nb[2];
        char *y = (char *)dst->data + n * dst->nb[3] + g0 * per_group * dst->nb[2];
        const float *w = weight ? weight + g0 * per_group : NULL;
        const float *b = bias ? bias + g0 * per_group : NULL;
        size_t count = (size_t)(g1 - g0);
        switch (a->type) {
        case GGML_TYPE_BF16:
            check(nk_groupnorm_forward_bf16(ctx, shape, count, (const nk_bf16 *)x, (nk_bf16 *)y, w, b,
                                            eps, NULL, NULL));
            break;
        case GGML_TYPE_F16:
            check(nk_groupnorm_forward_f16(ctx, shape, count, (const nk_f16 *)x, (nk_f16 *)y, w, b, eps,
                                           NULL, NULL));
            break;
        default:
            check(nk_groupnorm_forward(ctx, shape, count, (const float *)x, (float *)y, w, b, eps, NULL,
                                       NULL));
        }
        item += g1 - g0;
    }
}

struct ggml_tensor *nkg_group_norm(struct ggml_context *ctx, struct ggml_tensor *a, int n_groups,
                                   struct ggml_tensor *weight, struct ggml_tensor *bias,
                                   float eps) {
    check_data(a);
    /* each sample's (W, H, C) block contiguous */
    GGML_ASSERT(a->nb[1] == a->ne[0] * a->nb[0] && a->nb[2] == a->ne[1] * a->nb[1]);
    GGML_ASSERT(n_groups >= 1 && a->ne[2] % n_groups == 0 && (uint64_t)n_groups < (1u << 30));
    check_param(weight, a->ne[2]);
    check_param(bias, a->ne[2]);
    return norm_node(ctx, a, weight, bias, eps, (uint32_t)n_groups << GROUPS_SHIFT, group_op);
}
