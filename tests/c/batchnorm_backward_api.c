/*
 * The batch-norm backward functions of include/normkit.h, checked from C (and, compiled as C++,
 * from C++): nk_batchnorm_backward, nk_batchnorm_backward_reduce and
 * nk_batchnorm_backward_apply; and the bf16 and f16 twins of every batch-norm function,
 * against the float functions.
 *
 * Each result is compared with a naive double-precision loop written in this file. Cases run in
 * both layouts, on every ISA the CPU has, on 1- and 3-thread contexts and on the default (NULL)
 * context; results must be bitwise identical across thread counts, between in-place and
 * out-of-place calls, and between the local backward and reduce followed by apply. A batch split
 * in two shards (reduce each, add the sums, apply each with the global count) must give the
 * whole batch's gradients. Every error case checks the status code, that the error message is
 * set, and that no byte of any buffer changed.
 *
 * Exit status 0 when every check passes; otherwise 1, with one line per failed check on stderr.
 * Built and run by tests/c_api.rs.
 */

#include "normkit.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_checks = 0;
static int g_failures = 0;
static char g_case[160] = "";

static void check_at(int ok, int line, const char *what) {
    g_checks++;
    if (!ok) {
        g_failures++;
        if (g_failures <= 100) {
            fprintf(stderr, "FAIL (line %d) [%s]: %s\n", line, g_case, what);
        }
    }
}

#define CHECK(cond, what) check_at((cond) ? 1 : 0, __LINE__, what)

/* ------------------------------------------------------------------------------------------ */
/* Data and the double-precision reference.                                                    */

static uint64_t g_state = 0x1234567u;

static double uniform(void) {
    uint64_t z;
    g_state += 0x9E3779B97F4A7C15ull;
    z = g_state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0;
}

static double normal(void) {
    double u1 = 1.0 - uniform();
    double u2 = uniform();
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static size_t at(nk_shape s, size_t n, size_t c, size_t i) {
    return s.layout == NK_LAYOUT_NCS ? (n * s.channels + c) * s.spatial + i
                                     : (n * s.spatial + i) * s.channels + c;
}

typedef struct {
    nk_shape shape;
    size_t n;
    float *x, *dy, *gamma, *mean, *invstd;
    /* reference results */
    double *sum_dy, *sum_dy_xhat, *abs_dy, *abs_dy_xhat, *dx;
} data;

static void *alloc(size_t bytes) {
    void *p = malloc(bytes > 0 ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static void make(data *d, size_t batch, size_t channels, size_t spatial, int layout) {
    size_t c, b, i;
    d->shape.batch = batch;
    d->shape.channels = channels;
    d->shape.spatial = spatial;
    d->shape.layout = (nk_layout)layout;
    d->n = batch * channels * spatial;
    d->x = (float *)alloc(d->n * sizeof(float));
    d->dy = (float *)alloc(d->n * sizeof(float));
    d->dx = (double *)alloc(d->n * sizeof(double));
    d->gamma = (float *)alloc(channels * sizeof(float));
    d->mean = (float *)alloc(channels * sizeof(float));
    d->invstd = (float *)alloc(channels * sizeof(float));
    d->sum_dy = (double *)alloc(channels * sizeof(double));
    d->sum_dy_xhat = (double *)alloc(channels * sizeof(double));
    d->abs_dy = (double *)alloc(channels * sizeof(double));
    d->abs_dy_xhat = (double *)alloc(channels * sizeof(double));
    for (c = 0; c < channels; c++) {
        double offset = 100.0 * (uniform() - 0.5), spread = 0.5 + 2.0 * uniform();
        double mean = 0.0, var = 0.0, count = (double)(batch * spatial);
        d->gamma[c] = (float)(0.5 + uniform());
        for (b = 0; b < batch; b++) {
            for (i = 0; i < spatial; i++) {
                size_t k = at(d->shape, b, c, i);
                d->x[k] = (float)(offset + spread * normal());
                d->dy[k] = (float)(0.3 + normal());
                mean += d->x[k];
            }
        }
        mean /= count;
        for (b = 0; b < batch; b++) {
            for (i = 0; i < spatial; i++) {
                double v = d->x[at(d->shape, b, c, i)] - mean;
                var += v * v;
            }
        }
        var /= count;
        d->mean[c] = (float)mean;
        d->invstd[c] = (float)(1.0 / sqrt(var + 1e-5));
    }
    /* Reference sums and gradient, from the saved (float) statistics. */
    for (c = 0; c < channels; c++) {
        double s1 = 0, s2 = 0, a1 = 0, a2 = 0, count = (double)(batch * spatial);
        double m = d->mean[c], is = d->invstd[c], g = d->gamma[c];
        for (b = 0; b < batch; b++) {
            for (i = 0; i < spatial; i++) {
                size_t k = at(d->shape, b, c, i);
                double xhat = (d->x[k] - m) * is;
                s1 += d->dy[k];
                s2 += d->dy[k] * xhat;
                a1 += fabs((double)d->dy[k]);
                a2 += fabs(d->dy[k] * xhat);
            }
        }
        d->sum_dy[c] = s1;
        d->sum_dy_xhat[c] = s2;
        d->abs_dy[c] = a1;
        d->abs_dy_xhat[c] = a2;
        for (b = 0; b < batch; b++) {
            for (i = 0; i < spatial; i++) {
                size_t k = at(d->shape, b, c, i);
                double xhat = (d->x[k] - m) * is;
                d->dx[k] = g * is * (d->dy[k] - s1 / count - xhat * s2 / count);
            }
        }
    }
}

static void release(data *d) {
    free(d->x);
    free(d->dy);
    free(d->dx);
    free(d->gamma);
    free(d->mean);
    free(d->invstd);
    free(d->sum_dy);
    free(d->sum_dy_xhat);
    free(d->abs_dy);
    free(d->abs_dy_xhat);
}

static size_t channel_of(nk_shape s, size_t k) {
    return s.layout == NK_LAYOUT_NCS ? (k / s.spatial) % s.channels : k % s.channels;
}

/* dx within 1e-5 of the magnitude of its terms. */
static int dx_close(const data *d, const float *dx) {
    size_t k;
    double count = (double)(d->shape.batch * d->shape.spatial);
    for (k = 0; k < d->n; k++) {
        size_t c = channel_of(d->shape, k);
        double is = d->invstd[c], xhat = fabs((d->x[k] - d->mean[c]) * is);
        double terms = fabs((double)d->dy[k]) + 2.0 * d->abs_dy[c] / count +
                       2.0 * xhat * d->abs_dy_xhat[c] / count;
        double tol = 1e-5 * fabs(d->gamma[c] * is) * terms + 1e-30;
        if (!(fabs(dx[k] - d->dx[k]) <= tol)) {
            fprintf(stderr, "dx[%zu] = %.9g, want %.9g (tol %.3g)\n", k, (double)dx[k], d->dx[k],
                    tol);
            return 0;
        }
    }
    return 1;
}

static int sums_close(const data *d, const double *s1, const double *s2, double slack) {
    size_t c;
    for (c = 0; c < d->shape.channels; c++) {
        if (!(fabs(s1[c] - d->sum_dy[c]) <= slack * 1e-5 * d->abs_dy[c] + 1e-30) ||
            !(fabs(s2[c] - d->sum_dy_xhat[c]) <= slack * 1e-5 * d->abs_dy_xhat[c] + 1e-30)) {
            return 0;
        }
    }
    return 1;
}

static int same_bytes(const void *a, const void *b, size_t n) {
    return n == 0 || memcmp(a, b, n) == 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Results.                                                                                     */

static void check_results(const data *d, nk_context *ctx, const float *want_dx,
                          const float *want_dg, const float *want_db) {
    size_t n = d->n, c = d->shape.channels, k;
    float *dx = (float *)alloc(n * sizeof(float));
    float *dx2 = (float *)alloc(n * sizeof(float));
    float *dg = (float *)alloc(c * sizeof(float));
    float *db = (float *)alloc(c * sizeof(float));
    double *s1 = (double *)alloc(c * sizeof(double));
    double *s2 = (double *)alloc(c * sizeof(double));
    int ok;

    CHECK(nk_batchnorm_backward(ctx, d->shape, d->x, d->dy, dx, d->gamma, d->mean, d->invstd, dg,
                                db) == NK_OK,
          "backward returns NK_OK");
    CHECK(dx_close(d, dx), "dx matches the double loops");
    if (want_dx) {
        CHECK(same_bytes(dx, want_dx, n * sizeof(float)) && same_bytes(dg, want_dg, c * 4) &&
                  same_bytes(db, want_db, c * 4),
              "the same bits on every context of this ISA");
    }
    CHECK(nk_batchnorm_backward_reduce(ctx, d->shape, d->x, d->dy, d->mean, d->invstd, s1, s2) ==
              NK_OK,
          "reduce returns NK_OK");
    CHECK(sums_close(d, s1, s2, 1.0), "reduce matches the double loops");
    ok = 1;
    for (k = 0; k < c; k++) {
        ok = ok && dg[k] == (float)s2[k] && db[k] == (float)s1[k];
    }
    CHECK(ok, "dgamma and dbeta are the reduce sums rounded to float");
    CHECK(nk_batchnorm_backward_apply(ctx, d->shape, d->x, d->dy, dx2, d->gamma, d->mean,
                                      d->invstd, (uint64_t)(d->shape.batch * d->shape.spatial), s1,
                                      s2) == NK_OK,
          "apply returns NK_OK");
    CHECK(same_bytes(dx, dx2, n * sizeof(float)), "reduce then apply equals backward bitwise");
    /* In place: dx over dy. */
    memcpy(dx2, d->dy, n * sizeof(float));
    CHECK(nk_batchnorm_backward(ctx, d->shape, d->x, dx2, dx2, d->gamma, d->mean, d->invstd, NULL,
                                NULL) == NK_OK,
          "in-place backward returns NK_OK");
    CHECK(same_bytes(dx, dx2, n * sizeof(float)), "in place equals out of place");
    memcpy(dx2, d->dy, n * sizeof(float));
    CHECK(nk_batchnorm_backward_apply(ctx, d->shape, d->x, dx2, dx2, d->gamma, d->mean, d->invstd,
                                      (uint64_t)(d->shape.batch * d->shape.spatial), s1,
                                      s2) == NK_OK,
          "in-place apply returns NK_OK");
    CHECK(same_bytes(dx, dx2, n * sizeof(float)), "apply in place equals out of place");
    free(dx);
    free(dx2);
    free(dg);
    free(db);
    free(s1);
    free(s2);
}

/* Two shards of the batch: reduce each, add, apply each with the global count. */
static void check_shards(const data *d, nk_context *ctx) {
    size_t c = d->shape.channels, k, half = d->shape.batch / 2;
    size_t per = d->shape.channels * d->shape.spatial;
    nk_shape a = d->shape, b = d->shape;
    double *s1 = (double *)alloc(c * sizeof(double)), *s2 = (double *)alloc(c * sizeof(double));
    double *t1 = (double *)alloc(c * sizeof(double)), *t2 = (double *)alloc(c * sizeof(double));
    float *dx = (float *)alloc(d->n * sizeof(float));
    uint64_t count = (uint64_t)(d->shape.batch * d->shape.spatial);
    a.batch = half;
    b.batch = d->shape.batch - half;
    CHECK(nk_batchnorm_backward_reduce(ctx, a, d->x, d->dy, d->mean, d->invstd, s1, s2) == NK_OK,
          "shard 1 reduce");
    CHECK(nk_batchnorm_backward_reduce(ctx, b, d->x + half * per, d->dy + half * per, d->mean,
                                       d->invstd, t1, t2) == NK_OK,
          "shard 2 reduce");
    for (k = 0; k < c; k++) {
        s1[k] += t1[k];
        s2[k] += t2[k];
    }
    CHECK(sums_close(d, s1, s2, 1.0), "the shards' sums add up to the whole batch's");
    CHECK(nk_batchnorm_backward_apply(ctx, a, d->x, d->dy, dx, d->gamma, d->mean, d->invstd, count,
                                      s1, s2) == NK_OK,
          "shard 1 apply");
    CHECK(nk_batchnorm_backward_apply(ctx, b, d->x + half * per, d->dy + half * per,
                                      dx + half * per, d->gamma, d->mean, d->invstd, count, s1,
                                      s2) == NK_OK,
          "shard 2 apply");
    CHECK(dx_close(d, dx), "the shards' dx is the whole batch's");
    free(s1);
    free(s2);
    free(t1);
    free(t2);
    free(dx);
}

/* ------------------------------------------------------------------------------------------ */
/* Errors: status, message, nothing written.                                                   */

/* Every buffer of the error cases in one block, so one comparison covers them all. */
#define EB 2
#define EC 3
#define ES 5
#define EN (EB * EC * ES)
typedef struct {
    float x[EN], dy[EN], dx[EN], gamma[EC], mean[EC], invstd[EC], dg[EC], db[EC];
    double s1[EC], s2[EC];
} block;

static block g_block, g_snap;

static void expect(nk_status got, nk_status want, const char *what) {
    char text[200];
    snprintf(text, sizeof text, "%s: status %d, want %d", what, (int)got, (int)want);
    CHECK(got == want, text);
    snprintf(text, sizeof text, "%s: nothing written", what);
    CHECK(same_bytes(&g_block, &g_snap, sizeof g_block), text);
    snprintf(text, sizeof text, "%s: error message set", what);
    CHECK(nk_last_error_message()[0] != '\0', text);
}

static void check_errors(int layout) {
    block *g = &g_block;
    nk_shape s, big, bad;
    size_t k;
    s.batch = EB;
    s.channels = EC;
    s.spatial = ES;
    s.layout = (nk_layout)layout;
    big = s;
    big.batch = SIZE_MAX / 4;
    bad = s;
    bad.layout = (nk_layout)7;
    memset(g, 0x7f, sizeof *g);
    for (k = 0; k < EN; k++) {
        g->x[k] = (float)(k % 7);
        g->dy[k] = (float)(k % 3) - 1.0f;
    }
    for (k = 0; k < EC; k++) {
        g->gamma[k] = 1.0f;
        g->mean[k] = 3.0f;
        g->invstd[k] = 0.5f;
        g->s1[k] = 1.0;
        g->s2[k] = 2.0;
    }
    memcpy(&g_snap, g, sizeof *g);

    expect(nk_batchnorm_backward(NULL, s, NULL, g->dy, g->dx, g->gamma, g->mean, g->invstd, g->dg,
                                 g->db),
           NK_ERR_NULL_POINTER, "backward x NULL");
    expect(nk_batchnorm_backward(NULL, s, g->x, g->dy, g->dx, g->gamma, g->mean, NULL, g->dg,
                                 g->db),
           NK_ERR_NULL_POINTER, "backward save_invstd NULL");
    expect(nk_batchnorm_backward(NULL, big, g->x, g->dy, g->dx, g->gamma, g->mean, g->invstd,
                                 g->dg, g->db),
           NK_ERR_OVERFLOW, "backward overflow");
    expect(nk_batchnorm_backward(NULL, bad, g->x, g->dy, g->dx, g->gamma, g->mean, g->invstd,
                                 g->dg, g->db),
           NK_ERR_BAD_ARGUMENT, "backward bad layout");
    expect(nk_batchnorm_backward(NULL, s, g->x, g->dy, (float *)((char *)g->dx + 2), g->gamma,
                                 g->mean, g->invstd, g->dg, g->db),
           NK_ERR_MISALIGNED, "backward dx misaligned");
    expect(nk_batchnorm_backward(NULL, s, g->x, g->dy, g->x, g->gamma, g->mean, g->invstd, g->dg,
                                 g->db),
           NK_ERR_ALIAS, "backward dx == x");
    expect(nk_batchnorm_backward(NULL, s, g->x, g->dy, g->dx, g->gamma, g->mean, g->invstd, g->dg,
                                 g->dg),
           NK_ERR_ALIAS, "backward dgamma == dbeta");

    expect(nk_batchnorm_backward_reduce(NULL, s, g->x, g->dy, g->mean, g->invstd, NULL, g->s2),
           NK_ERR_NULL_POINTER, "reduce sum_dy NULL");
    expect(nk_batchnorm_backward_reduce(NULL, big, g->x, g->dy, g->mean, g->invstd, g->s1, g->s2),
           NK_ERR_OVERFLOW, "reduce overflow");
    expect(nk_batchnorm_backward_reduce(NULL, bad, g->x, g->dy, g->mean, g->invstd, g->s1, g->s2),
           NK_ERR_BAD_ARGUMENT, "reduce bad layout");
    expect(nk_batchnorm_backward_reduce(NULL, s, g->x, g->dy, g->mean, g->invstd,
                                        (double *)((char *)g->s1 + 4), g->s2),
           NK_ERR_MISALIGNED, "reduce sum_dy misaligned");
    expect(nk_batchnorm_backward_reduce(NULL, s, g->x, g->dy, g->mean, g->invstd, g->s1, g->s1),
           NK_ERR_ALIAS, "reduce sums overlap");

    expect(nk_batchnorm_backward_apply(NULL, s, g->x, g->dy, NULL, g->gamma, g->mean, g->invstd,
                                       EB * ES, g->s1, g->s2),
           NK_ERR_NULL_POINTER, "apply dx NULL");
    expect(nk_batchnorm_backward_apply(NULL, big, g->x, g->dy, g->dx, g->gamma, g->mean,
                                       g->invstd, 0, g->s1, g->s2),
           NK_ERR_OVERFLOW, "apply overflow before count");
    expect(nk_batchnorm_backward_apply(NULL, s, g->x, g->dy, g->dx, g->gamma, g->mean, g->invstd,
                                       0, g->s1, g->s2),
           NK_ERR_BAD_SHAPE, "apply count 0");
    expect(nk_batchnorm_backward_apply(NULL, bad, g->x, g->dy, g->dx, g->gamma, g->mean,
                                       g->invstd, EB * ES - 1, g->s1, g->s2),
           NK_ERR_BAD_SHAPE, "apply count below the shard's, before the layout");
    expect(nk_batchnorm_backward_apply(NULL, bad, g->x, g->dy, g->dx, g->gamma, g->mean,
                                       g->invstd, EB * ES, g->s1, g->s2),
           NK_ERR_BAD_ARGUMENT, "apply bad layout");
    expect(nk_batchnorm_backward_apply(NULL, s, g->x, g->dy, g->dx, g->gamma, g->mean,
                                       (const float *)((const char *)g->invstd + 1), EB * ES,
                                       g->s1, g->s2),
           NK_ERR_MISALIGNED, "apply save_invstd misaligned");
    expect(nk_batchnorm_backward_apply(NULL, s, g->x, g->dy, g->dy + 1, g->gamma, g->mean,
                                       g->invstd, EB * ES, g->s1, g->s2),
           NK_ERR_ALIAS, "apply dx overlaps dy");

    /* Zero elements: NULL data accepted, the sums are zeros. */
    {
        nk_shape empty = s;
        empty.batch = 0;
        CHECK(nk_batchnorm_backward_reduce(NULL, empty, NULL, NULL, g->mean, g->invstd, g->s1,
                                           g->s2) == NK_OK &&
                  g->s1[0] == 0.0 && g->s2[2] == 0.0,
              "reduce of an empty shard writes zeros");
        CHECK(nk_batchnorm_backward(NULL, empty, NULL, NULL, NULL, NULL, g->mean, g->invstd, g->dg,
                                    g->db) == NK_OK &&
                  g->dg[1] == 0.0f && g->db[2] == 0.0f,
              "backward of an empty batch writes zero dgamma and dbeta");
        CHECK(nk_batchnorm_backward_apply(NULL, empty, NULL, NULL, NULL, NULL, g->mean, g->invstd,
                                          10, g->s1, g->s2) == NK_OK,
              "apply on an empty shard");
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The bf16 and f16 twins of the batch-norm functions, against the float functions on the      */
/* widened data: outputs within one rounding of the type, statistics bitwise.                  */

static float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static float bf16_to_float(nk_bf16 h) { return bits_to_float((uint32_t)h.bits << 16); }

static float f16_to_float(nk_f16 h) {
    unsigned e = (h.bits >> 10) & 0x1fu, m = h.bits & 0x3ffu;
    double v = e == 0 ? ldexp((double)m, -24) : ldexp((double)(m | 0x400u), (int)e - 25);
    if (e == 31) {
        v = m == 0 ? HUGE_VAL : NAN;
    }
    return (float)((h.bits & 0x8000u) ? -v : v);
}

/* Random values in about [1/4, 8) with either sign: bits of the type, exponent chosen. */
static nk_bf16 random_bf16(void) {
    nk_bf16 h;
    unsigned sign = uniform() < 0.5 ? 0x8000u : 0u;
    unsigned e = 125u + (unsigned)(uniform() * 5.0), m = (unsigned)(uniform() * 128.0) & 0x7fu;
    h.bits = (uint16_t)(sign | (e << 7) | m);
    return h;
}

static nk_f16 random_f16(void) {
    nk_f16 h;
    unsigned sign = uniform() < 0.5 ? 0x8000u : 0u;
    unsigned e = 13u + (unsigned)(uniform() * 5.0), m = (unsigned)(uniform() * 1024.0) & 0x3ffu;
    h.bits = (uint16_t)(sign | (e << 10) | m);
    return h;
}

/* Within half a unit in the last place of the type: 2^-8 relative for bf16, 2^-11 for f16. */
static int rounded_from(double h, double want, double rel) {
    if (want != want) {
        return h != h;
    }
    return fabs(h - want) <= rel * fabs(want) + 3e-8;
}

#define HALF_TWINS(T, SUF, TO_FLOAT, RANDOM, REL)                                                 \
    do {                                                                                         \
        enum { NB = 3, NC = 5, NS = 7, NN = NB * NC * NS };                                      \
        nk_shape shape;                                                                          \
        T xh[NN], dyh[NN], yh[NN];                                                               \
        float xf[NN], dyf[NN], yf[NN], gamma[NC], beta[NC], mean[NC], var[NC];                   \
        float rm[2][NC], rv[2][NC], sm[2][NC], si[2][NC], dg[2][NC], db[2][NC];                  \
        double m[2][NC], m2[2][NC], s1[2][NC], s2[2][NC];                                        \
        size_t i;                                                                                \
        shape.batch = NB;                                                                        \
        shape.channels = NC;                                                                     \
        shape.spatial = NS;                                                                      \
        shape.layout = (nk_layout)layout;                                                        \
        for (i = 0; i < (size_t)NN; i++) {                                                       \
            xh[i] = RANDOM();                                                                    \
            dyh[i] = RANDOM();                                                                   \
            xf[i] = TO_FLOAT(xh[i]);                                                             \
            dyf[i] = TO_FLOAT(dyh[i]);                                                           \
        }                                                                                        \
        for (i = 0; i < (size_t)NC; i++) {                                                       \
            gamma[i] = (float)(0.5 + uniform());                                                 \
            beta[i] = (float)normal();                                                           \
            mean[i] = (float)normal();                                                           \
            var[i] = (float)(1.0 + uniform());                                                   \
            rm[0][i] = rm[1][i] = 0.0f;                                                          \
            rv[0][i] = rv[1][i] = 1.0f;                                                          \
        }                                                                                        \
        CHECK(nk_batchnorm_forward_training(NULL, shape, xf, yf, gamma, beta, 1e-5f, 0.1f, 0,    \
                                            rm[0], rv[0], sm[0], si[0]) == NK_OK &&              \
                  nk_batchnorm_forward_training##SUF(NULL, shape, xh, yh, gamma, beta, 1e-5f,    \
                                                     0.1f, 0, rm[1], rv[1], sm[1],               \
                                                     si[1]) == NK_OK,                            \
              "forward_training" #SUF);                                                          \
        for (i = 0; i < (size_t)NN; i++) {                                                       \
            CHECK(rounded_from(TO_FLOAT(yh[i]), yf[i], REL), "forward_training" #SUF " y");     \
        }                                                                                        \
        CHECK(same_bytes(rm[0], rm[1], sizeof rm[0]) && same_bytes(rv[0], rv[1], sizeof rv[0]) && \
                  same_bytes(sm[0], sm[1], sizeof sm[0]) &&                                      \
                  same_bytes(si[0], si[1], sizeof si[0]),                                        \
              "forward_training" #SUF " statistics");                                            \
        CHECK(nk_batchnorm_forward_inference(NULL, shape, xf, yf, gamma, beta, mean, var, 1e-3f, \
                                             NK_BN_FUSE_RELU) == NK_OK &&                        \
                  nk_batchnorm_forward_inference##SUF(NULL, shape, xh, yh, gamma, beta, mean,    \
                                                      var, 1e-3f, NK_BN_FUSE_RELU) == NK_OK,     \
              "forward_inference" #SUF);                                                         \
        for (i = 0; i < (size_t)NN; i++) {                                                       \
            CHECK(rounded_from(TO_FLOAT(yh[i]), yf[i], REL), "forward_inference" #SUF " y");    \
        }                                                                                        \
        CHECK(nk_moments(NULL, shape, xf, m[0], m2[0]) == NK_OK &&                               \
                  nk_moments##SUF(NULL, shape, xh, m[1], m2[1]) == NK_OK &&                      \
                  same_bytes(m[0], m[1], sizeof m[0]) && same_bytes(m2[0], m2[1], sizeof m2[0]), \
              "moments" #SUF);                                                                   \
        CHECK(nk_batchnorm_forward_from_moments(NULL, shape, xf, yf, gamma, beta, 2 * NB * NS,   \
                                                m[0], m2[0], 1e-5f, 0.5f, 0, rm[0], rv[0],       \
                                                sm[0], si[0]) == NK_OK &&                        \
                  nk_batchnorm_forward_from_moments##SUF(NULL, shape, xh, yh, gamma, beta,       \
                                                         2 * NB * NS, m[0], m2[0], 1e-5f, 0.5f,  \
                                                         0, rm[1], rv[1], sm[1],                 \
                                                         si[1]) == NK_OK,                        \
              "forward_from_moments" #SUF);                                                      \
        for (i = 0; i < (size_t)NN; i++) {                                                       \
            CHECK(rounded_from(TO_FLOAT(yh[i]), yf[i], REL), "forward_from_moments" #SUF " y"); \
        }                                                                                        \
        CHECK(same_bytes(rm[0], rm[1], sizeof rm[0]) && same_bytes(si[0], si[1], sizeof si[0]), \
              "forward_from_moments" #SUF " statistics");                                        \
        CHECK(nk_batchnorm_backward(NULL, shape, xf, dyf, yf, gamma, sm[0], si[0], dg[0],        \
                                    db[0]) == NK_OK &&                                           \
                  nk_batchnorm_backward##SUF(NULL, shape, xh, dyh, yh, gamma, sm[0], si[0],      \
                                             dg[1], db[1]) == NK_OK,                             \
              "backward" #SUF);                                                                  \
        for (i = 0; i < (size_t)NN; i++) {                                                       \
            CHECK(rounded_from(TO_FLOAT(yh[i]), yf[i], REL), "backward" #SUF " dx");            \
        }                                                                                        \
        CHECK(same_bytes(dg[0], dg[1], sizeof dg[0]) && same_bytes(db[0], db[1], sizeof db[0]), \
              "backward" #SUF " dgamma, dbeta");                                                 \
        CHECK(nk_batchnorm_backward_reduce(NULL, shape, xf, dyf, sm[0], si[0], s1[0], s2[0]) ==  \
                      NK_OK &&                                                                   \
                  nk_batchnorm_backward_reduce##SUF(NULL, shape, xh, dyh, sm[0], si[0], s1[1],   \
                                                    s2[1]) == NK_OK &&                           \
                  same_bytes(s1[0], s1[1], sizeof s1[0]) &&                                      \
                  same_bytes(s2[0], s2[1], sizeof s2[0]),                                        \
              "backward_reduce" #SUF);                                                           \
        CHECK(nk_batchnorm_backward_apply(NULL, shape, xf, dyf, yf, gamma, sm[0], si[0],         \
                                          3 * NB * NS, s1[0], s2[0]) == NK_OK &&                 \
                  nk_batchnorm_backward_apply##SUF(NULL, shape, xh, dyh, yh, gamma, sm[0],       \
                                                   si[0], 3 * NB * NS, s1[0], s2[0]) == NK_OK,   \
              "backward_apply" #SUF);                                                            \
        for (i = 0; i < (size_t)NN; i++) {                                                       \
            CHECK(rounded_from(TO_FLOAT(yh[i]), yf[i], REL), "backward_apply" #SUF " dx");      \
        }                                                                                        \
    } while (0)

static void check_half_twins(int layout) {
    HALF_TWINS(nk_bf16, _bf16, bf16_to_float, random_bf16, 1.0 / 256.0);
    HALF_TWINS(nk_f16, _f16, f16_to_float, random_f16, 1.0 / 2048.0);
}

int main(void) {
    static const nk_isa isas[] = {NK_ISA_PORTABLE, NK_ISA_AVX2, NK_ISA_AVX512, NK_ISA_NEON};
    static const size_t dims[][3] = {{3, 5, 37}, {4, 9, 1000}, {7, 1, 1}, {2, 70, 3}};
    size_t di, ii;
    int layout;
    for (layout = 0; layout < 2; layout++) {
        for (di = 0; di < sizeof dims / sizeof dims[0]; di++) {
            data d;
            make(&d, dims[di][0], dims[di][1], dims[di][2], layout);
            for (ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
                nk_context *one = NULL, *three = NULL;
                float *dx = (float *)alloc(d.n * sizeof(float));
                float *dg = (float *)alloc(d.shape.channels * sizeof(float));
                float *db = (float *)alloc(d.shape.channels * sizeof(float));
                snprintf(g_case, sizeof g_case, "layout %d, shape %zux%zux%zu, isa %d", layout,
                         dims[di][0], dims[di][1], dims[di][2], (int)isas[ii]);
                CHECK(nk_context_create(1, &one) == NK_OK && nk_context_create(3, &three) == NK_OK,
                      "contexts");
                if (nk_context_set_isa(one, isas[ii]) != NK_OK) {
                    nk_context_destroy(one);
                    nk_context_destroy(three);
                    free(dx);
                    free(dg);
                    free(db);
                    continue;
                }
                CHECK(nk_context_set_isa(three, isas[ii]) == NK_OK, "set ISA");
                CHECK(nk_batchnorm_backward(one, d.shape, d.x, d.dy, dx, d.gamma, d.mean, d.invstd,
                                            dg, db) == NK_OK,
                      "backward on one thread");
                check_results(&d, one, dx, dg, db);
                check_results(&d, three, dx, dg, db);
                check_shards(&d, three);
                nk_context_destroy(one);
                nk_context_destroy(three);
                free(dx);
                free(dg);
                free(db);
            }
            snprintf(g_case, sizeof g_case, "layout %d, shape %zux%zux%zu, default context",
                     layout, dims[di][0], dims[di][1], dims[di][2]);
            check_results(&d, NULL, NULL, NULL, NULL);
            release(&d);
        }
        snprintf(g_case, sizeof g_case, "errors, layout %d", layout);
        check_errors(layout);
        snprintf(g_case, sizeof g_case, "bf16 and f16 twins, layout %d", layout);
        check_half_twins(layout);
    }
    printf("batchnorm_backward_api: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
