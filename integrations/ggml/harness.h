/* Shared by check.c and bench.c: ggml graphs run on ggml's own thread pools, test data, and
 * element conversion between float and ggml's tensor types. */
#ifndef NKG_HARNESS_H
#define NKG_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-cpu.h"
#include "ggml.h"

/* One persistent ggml thread pool per thread count (as llama.cpp keeps one), so that graph runs
 * do not start threads. */
/* The operations both programs run. */
typedef enum { OP_RMS, OP_LAYER, OP_GROUP, OP_ADD_RMS } op_kind;

static inline struct ggml_tensor *to_f32(struct ggml_context *ctx, struct ggml_tensor *t) {
    return t->type == GGML_TYPE_F32 ? t : ggml_cast(ctx, t, GGML_TYPE_F32);
}

static inline struct ggml_tensor *to_type(struct ggml_context *ctx, struct ggml_tensor *t,
                                          enum ggml_type type) {
    return type == GGML_TYPE_F32 ? t : ggml_cast(ctx, t, type);
}

/* ggml's own graph for `op` (f32 only: other types are cast first), before weight and bias:
 * the fused add is ggml_add (which takes bf16 and f16 directly) then the norm, its sum in
 * *sum. */
static inline struct ggml_tensor *ggml_side(struct ggml_context *ctx, op_kind op,
                                            struct ggml_tensor *x, struct ggml_tensor *res,
                                            int groups, float eps, struct ggml_tensor **sum) {
    struct ggml_tensor *h;
    *sum = NULL;
    if (op == OP_ADD_RMS) {
        *sum = ggml_add(ctx, x, res);
        h = to_f32(ctx, *sum);
    } else {
        h = to_f32(ctx, x);
    }
    return op == OP_RMS || op == OP_ADD_RMS ? ggml_rms_norm(ctx, h, eps)
           : op == OP_LAYER                 ? ggml_norm(ctx, h, eps)
                                            : ggml_group_norm(ctx, h, groups, eps);
}

enum { MAX_POOLS = 8 };
static struct ggml_threadpool *pools[MAX_POOLS + 1];
static uint8_t *work_buffer;
static size_t work_size;

static inline void compute(struct ggml_cgraph *gf, int nth) {
    if (nth < 1 || nth > MAX_POOLS) {
        fprintf(stderr, "thread count %d out of range\n", nth);
        exit(2);
    }
    if (pools[nth] == NULL) {
        struct ggml_threadpool_params params = ggml_threadpool_params_default(nth);
        pools[nth] = ggml_threadpool_new(&params);
    }
    struct ggml_cplan plan = ggml_graph_plan(gf, nth, pools[nth]);
    if (plan.work_size > work_size) {
        free(work_buffer);
        work_buffer = malloc(plan.work_size);
        work_size = plan.work_size;
    }
    plan.work_data = work_buffer;
    if (ggml_graph_compute(gf, &plan) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "ggml_graph_compute failed\n");
        exit(2);
    }
}

static inline void free_pools(void) {
    for (int i = 0; i <= MAX_POOLS; i++) {
        if (pools[i] != NULL) {
            ggml_threadpool_free(pools[i]);
            pools[i] = NULL;
        }
    }
    free(work_buffer);
    work_buffer = NULL;
    work_size = 0;
}

static inline struct ggml_context *new_context(size_t bytes) {
    struct ggml_init_params params = {bytes, NULL, false};
    struct ggml_context *ctx = ggml_init(params);
    if (ctx == NULL) {
        fprintf(stderr, "ggml_init(%zu bytes) failed\n", bytes);
        exit(2);
    }
    return ctx;
}

/* xorshift64* and Box-Muller: the same data on every run. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static inline double uniform01(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545f4914f6cdd1dull) >> 11) * 0x1.0p-53;
}

static inline double normal(void) {
    double u = uniform01(), v = uniform01();
    return sqrt(-2.0 * log(u + 0x1.0p-60)) * cos(6.283185307179586 * v);
}

/* Element i of t counted in ggml order (ne[0] fastest), at its strided address. */
static inline char *element(const struct ggml_tensor *t, int64_t i) {
    int64_t i0 = i % t->ne[0], i1 = (i / t->ne[0]) % t->ne[1];
    int64_t i2 = (i / (t->ne[0] * t->ne[1])) % t->ne[2], i3 = i / (t->ne[0] * t->ne[1] * t->ne[2]);
    return (char *)t->data + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
}

static inline float get(const struct ggml_tensor *t, int64_t i) {
    const char *p = element(t, i);
    switch (t->type) {
    case GGML_TYPE_F32: return *(const float *)p;
    case GGML_TYPE_BF16: return ggml_bf16_to_fp32(*(const ggml_bf16_t *)p);
    case GGML_TYPE_F16: return ggml_fp16_to_fp32(*(const ggml_fp16_t *)p);
    default: abort();
    }
}

/* Stores v rounded to t's type (to nearest, ties to even). */
static inline void set(struct ggml_tensor *t, int64_t i, float v) {
    char *p = element(t, i);
    switch (t->type) {
    case GGML_TYPE_F32: *(float *)p = v; break;
    case GGML_TYPE_BF16: *(ggml_bf16_t *)p = ggml_fp32_to_bf16(v); break;
    case GGML_TYPE_F16: *(ggml_fp16_t *)p = ggml_fp32_to_fp16(v); break;
    default: abort();
    }
}

/* Fills t with N(0,1), except that every third block of unit_rows rows (vectors along ne[0]) is
 * 10000 + N(0,1); unit_rows 0: no offset blocks. */
static inline void fill(struct ggml_tensor *t, int64_t unit_rows) {
    int64_t n = ggml_nelements(t);
    for (int64_t i = 0; i < n; i++) {
        int64_t unit = unit_rows > 0 ? i / t->ne[0] / unit_rows : 0;
        set(t, i, (float)((unit_rows > 0 && unit % 3 == 2 ? 10000.0 : 0.0) + normal()));
    }
}

static inline const char *type_label(enum ggml_type type) {
    return type == GGML_TYPE_F32 ? "f32" : type == GGML_TYPE_BF16 ? "bf16" : "f16";
}

#endif
