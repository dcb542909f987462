/*
 * Shared by the executor examples (openmp.c, thread_pool.cpp, serial.c): a workload of a few real
 * normkit calls, and the check that an executor context computes exactly what a context with its
 * own threads computes. Valid C11 and C++17; include it from one translation unit only.
 *
 * example_check(name, ctx, stats) runs the workload on `ctx` (the executor context) and on
 * nk_context_create(2, ...), compares every output byte for byte, checks that the executor was
 * actually used (stats->batches > 0), prints one line and returns the exit status (0 = pass).
 */
#ifndef NORMKIT_EXECUTOR_EXAMPLE_COMMON_H
#define NORMKIT_EXECUTOR_EXAMPLE_COMMON_H

#include "normkit.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What an example's parallel_for counts: how often normkit called it, and the tasks it ran. */
typedef struct example_stats {
    size_t batches;
    size_t tasks;
} example_stats;

/* Every buffer of one run (inputs and outputs) lives in one zeroed block, so two runs are
 * compared with memcmp; `names` and `ends` record which output each byte range belongs to. */
enum { EXAMPLE_ARENA_BYTES = 16 << 20, EXAMPLE_MAX_BUFFERS = 32 };
typedef struct example_run {
    unsigned char *base;
    size_t used, count;
    const char *names[EXAMPLE_MAX_BUFFERS];
    size_t ends[EXAMPLE_MAX_BUFFERS];
    int failures;
} example_run;

static float *example_floats(example_run *r, const char *name, size_t n) {
    size_t start = (r->used + 63) & ~(size_t)63; /* 64-byte aligned */
    if (start + n * sizeof(float) > EXAMPLE_ARENA_BYTES || r->count == EXAMPLE_MAX_BUFFERS) {
        fprintf(stderr, "example arena too small\n");
        exit(2);
    }
    r->used = start + n * sizeof(float);
    r->names[r->count] = name;
    r->ends[r->count++] = r->used;
    return (float *)(void *)(r->base + start);
}

/* Fills x with reproducible values in [-2, 2) plus a per-index offset (xorshift64). */
static void example_fill(float *x, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        x[i] = (float)(seed >> 40) * (4.0f / 16777216.0f) - 2.0f + (float)(i % 5) * 0.25f;
    }
}

static void example_status(example_run *r, nk_status s, const char *call) {
    if (s != NK_OK) {
        fprintf(stderr, "%s: %s (%s)\n", call, nk_status_string(s), nk_last_error_message());
        r->failures++;
    }
}
#define EXAMPLE_CALL(run, call) example_status((run), (call), #call)

/* The workload: every call is large enough (>= 2^17 elements) to be split into several tasks. */
static example_run example_workload(nk_context *ctx) {
    example_run r;
    memset(&r, 0, sizeof r);
    r.base = (unsigned char *)calloc(1, EXAMPLE_ARENA_BYTES);
    if (r.base == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    const size_t N = 1u << 19; /* inputs shared by every call (each uses a prefix) */
    float *x = example_floats(&r, "x", N), *dy = example_floats(&r, "dy", N);
    example_fill(x, N, 0x9E3779B97F4A7C15ull);
    example_fill(dy, N, 0xD1B54A32D192ED03ull);
    float *gamma = example_floats(&r, "gamma", 768), *beta = example_floats(&r, "beta", 768);
    example_fill(gamma, 768, 7);
    example_fill(beta, 768, 11);

    /* Batch norm training forward, (N, C, H*W) = (8, 16, 32*32), NCHW then NHWC. */
    for (int l = 0; l < 2; l++) {
        nk_shape sh = {8, 16, 32 * 32, l == 0 ? NK_LAYOUT_NCS : NK_LAYOUT_NSC};
        float *y = example_floats(&r, l == 0 ? "batchnorm NCHW y" : "batchnorm NHWC y",
                                  8 * 16 * 1024);
        /* running mean, running variance, saved mean, saved inverse std: 16 each */
        float *st = example_floats(&r, l == 0 ? "NCHW statistics" : "NHWC statistics", 64);
        EXAMPLE_CALL(&r, nk_batchnorm_forward_training(ctx, sh, x, y, gamma, beta, 1e-5f, 0.1f, 0,
                                                       st, st + 16, st + 32, st + 48));
    }
    /* Layer norm forward and backward over (512, 768): one row per token. */
    float *ln_y = example_floats(&r, "layernorm y", 512 * 768);
    float *ln_saves = example_floats(&r, "layernorm saves", 2 * 512);
    EXAMPLE_CALL(&r, nk_layernorm_forward(ctx, 512, 768, x, ln_y, gamma, beta, 1e-5f, ln_saves,
                                          ln_saves + 512));
    float *ln_dx = example_floats(&r, "layernorm dx", 512 * 768);
    float *ln_dgb = example_floats(&r, "layernorm dgamma, dbeta", 2 * 768);
    EXAMPLE_CALL(&r, nk_layernorm_backward(ctx, 512, 768, x, dy, ln_dx, gamma, ln_saves,
                                           ln_saves + 512, ln_dgb, ln_dgb + 768));
    /* Group norm forward, (8, 32, 32*32) NCHW in 8 groups. */
    nk_shape gsh = {8, 32, 32 * 32, NK_LAYOUT_NCS};
    float *gn_y = example_floats(&r, "groupnorm y", 8 * 32 * 1024);
    float *gn_saves = example_floats(&r, "groupnorm saves", 2 * 8 * 8);
    EXAMPLE_CALL(&r, nk_groupnorm_forward(ctx, gsh, 8, x, gn_y, gamma, beta, 1e-5f, gn_saves,
                                          gn_saves + 64));
    /* Dropout (p = 0.25) of 2^19 elements, with its keep mask. */
    float *dr_y = example_floats(&r, "dropout y", N);
    uint8_t *mask = (uint8_t *)(void *)example_floats(&r, "dropout mask", N / 8 / sizeof(float));
    EXAMPLE_CALL(&r, nk_dropout_forward(ctx, N, x, dr_y, 0.25f, 42, 0, mask));
    return r;
}

static int example_check(const char *name, nk_context *ctx, const example_stats *stats) {
    nk_context *own = NULL;
    if (nk_context_create(2, &own) != NK_OK) {
        fprintf(stderr, "%s: nk_context_create(2) failed\n", name);
        return 1;
    }
    example_run a = example_workload(ctx), b = example_workload(own);
    nk_context_destroy(own);
    int failures = a.failures + b.failures;
    size_t start = 0;
    for (size_t i = 0; i < a.count; i++) { /* both runs laid out their buffers alike */
        if (memcmp(a.base + start, b.base + start, a.ends[i] - start) != 0) {
            fprintf(stderr, "%s: %s differs from the 2-thread context's\n", name, a.names[i]);
            failures++;
        }
        start = a.ends[i];
    }
    if (stats->batches == 0) {
        fprintf(stderr, "%s: parallel_for was never called\n", name);
        failures++;
    }
    printf("%s: %s; parallel_for called %zu times for %zu tasks\n", name,
           failures == 0 ? "outputs bitwise equal to a 2-thread context" : "FAILED",
           stats->batches, stats->tasks);
    free(a.base);
    free(b.base);
    return failures == 0 ? 0 : 1;
}

#endif /* NORMKIT_EXECUTOR_EXAMPLE_COMMON_H */
