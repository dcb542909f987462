/*
 * Group and instance norm through the C API, checked from C (and, compiled as C++, from C++)
 * against the committed header and the library.
 *
 * nk_groupnorm_forward, nk_groupnorm_backward and nk_instancenorm_forward are called on every
 * ISA the CPU has, in both layouts, on a 2-thread and a 1-thread context, and compared with
 * naive double-precision loops written in this file; results must be bitwise identical across
 * thread counts and between in-place and out-of-place calls, and instance norm must equal group
 * norm with groups = C bit for bit. Error cases check the status and that no output changed.
 *
 * Exit status 0 when every check passes; otherwise 1, with one line per failed check on stderr.
 * Built and run by tests/c_api.rs.
 */

#include "normkit.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_checks = 0;
static int g_failures = 0;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        g_checks++;                                                                                \
        if (!(cond)) {                                                                             \
            g_failures++;                                                                          \
            if (g_failures <= 100) {                                                               \
                fprintf(stderr, "FAIL (line %d): ", __LINE__);                                     \
                fprintf(stderr, __VA_ARGS__);                                                      \
                fputc('\n', stderr);                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/* Deterministic values: SplitMix64, then Box-Muller. */
static uint64_t g_state = 12345;

static double uniform01(void) {
    g_state += 0x9E3779B97F4A7C15ull;
    uint64_t z = g_state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((double)(z >> 11) + 1.0) / 9007199254740992.0;
}

static double normal(void) {
    return sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01());
}

static float *alloc_floats(size_t n) {
    float *p = (float *)malloc((n ? n : 1) * sizeof(float));
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static size_t at(const nk_shape *s, size_t n, size_t c, size_t i) {
    return s->layout == NK_LAYOUT_NCS ? (n * s->channels + c) * s->spatial + i
                                      : (n * s->spatial + i) * s->channels + c;
}

static int same_bits(const float *a, const float *b, size_t n) {
    return n == 0 || memcmp(a, b, n * sizeof(float)) == 0;
}

/* Reference forward: mean, biased variance per (n, g) in two passes; returns y, mean, invstd. */
static void ref_forward(const nk_shape *s, size_t groups, const float *x, const float *gamma,
                        const float *beta, float eps, double *y, double *mean, double *invstd) {
    size_t per = s->channels / groups;
    for (size_t n = 0; n < s->batch; n++) {
        for (size_t g = 0; g < groups; g++) {
            double sum = 0.0, sq = 0.0, count = (double)(per * s->spatial);
            for (size_t c = g * per; c < (g + 1) * per; c++)
                for (size_t i = 0; i < s->spatial; i++) sum += x[at(s, n, c, i)];
            double m = sum / count;
            for (size_t c = g * per; c < (g + 1) * per; c++)
                for (size_t i = 0; i < s->spatial; i++) {
                    double d = x[at(s, n, c, i)] - m;
                    sq += d * d;
                }
            double is = 1.0 / sqrt(sq / count + eps);
            mean[n * groups + g] = m;
            invstd[n * groups + g] = is;
            for (size_t c = g * per; c < (g + 1) * per; c++)
                for (size_t i = 0; i < s->spatial; i++) {
                    size_t k = at(s, n, c, i);
                    y[k] = gamma[c] * (x[k] - m) * is + beta[c];
                }
        }
    }
}

/* Reference backward from saved statistics. */
static void ref_backward(const nk_shape *s, size_t groups, const float *x, const float *dy,
                         const float *gamma, const float *mean, const float *invstd, double *dx,
                         double *dgamma, double *dbeta) {
    size_t per = s->channels / groups;
    for (size_t c = 0; c < s->channels; c++) dgamma[c] = dbeta[c] = 0.0;
    for (size_t n = 0; n < s->batch; n++) {
        for (size_t g = 0; g < groups; g++) {
            double m = mean[n * groups + g], is = invstd[n * groups + g];
            double count = (double)(per * s->spatial), mg = 0.0, mgx = 0.0;
            for (size_t c = g * per; c < (g + 1) * per; c++)
                for (size_t i = 0; i < s->spatial; i++) {
                    size_t k = at(s, n, c, i);
                    double xh = (x[k] - m) * is;
                    mg += dy[k] * (double)gamma[c];
                    mgx += dy[k] * (double)gamma[c] * xh;
                    dgamma[c] += dy[k] * xh;
                    dbeta[c] += dy[k];
                }
            mg /= count;
            mgx /= count;
            for (size_t c = g * per; c < (g + 1) * per; c++)
                for (size_t i = 0; i < s->spatial; i++) {
                    size_t k = at(s, n, c, i);
                    double xh = (x[k] - m) * is;
                    dx[k] = is * (dy[k] * (double)gamma[c] - mg - xh * mgx);
                }
        }
    }
}

static void run_shape(nk_context *ctx2, nk_context *ctx1, size_t batch, size_t channels,
                      size_t spatial, size_t groups, nk_layout layout, double offset) {
    nk_shape s = {batch, channels, spatial, layout};
    size_t len = batch * channels * spatial, saves = batch * groups;
    float *x = alloc_floats(len), *y = alloc_floats(len), *y1 = alloc_floats(len);
    float *dy = alloc_floats(len), *dx = alloc_floats(len), *dx1 = alloc_floats(len);
    float *gamma = alloc_floats(channels), *beta = alloc_floats(channels);
    float *mean = alloc_floats(saves), *invstd = alloc_floats(saves);
    float *mean1 = alloc_floats(saves), *invstd1 = alloc_floats(saves);
    float *dgamma = alloc_floats(channels), *dbeta = alloc_floats(channels);
    float *dgamma1 = alloc_floats(channels), *dbeta1 = alloc_floats(channels);
    double *ry = (double *)malloc((len + 1) * sizeof(double));
    double *rdx = (double *)malloc((len + 1) * sizeof(double));
    double *rmean = (double *)malloc((saves + 1) * sizeof(double));
    double *rinvstd = (double *)malloc((saves + 1) * sizeof(double));
    double *rdg = (double *)malloc((channels + 1) * sizeof(double));
    double *rdb = (double *)malloc((channels + 1) * sizeof(double));
    if (!ry || !rdx || !rmean || !rinvstd || !rdg || !rdb) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < len; i++) {
        x[i] = (float)(offset + normal());
        dy[i] = (float)(0.2 + normal());
    }
    for (size_t c = 0; c < channels; c++) {
        gamma[c] = (float)(0.5 + uniform01());
        beta[c] = (float)(uniform01() - 0.5);
    }
    const float eps = 1e-5f;
    const char *lname = layout == NK_LAYOUT_NCS ? "NCS" : "NSC";

    nk_status st = nk_groupnorm_forward(ctx2, s, groups, x, y, gamma, beta, eps, mean, invstd);
    CHECK(st == NK_OK, "forward (%zu,%zu,%zu)/%zu %s: status %d", batch, channels, spatial,
          groups, lname, (int)st);
    ref_forward(&s, groups, x, gamma, beta, eps, ry, rmean, rinvstd);
    double worst = 0.0;
    for (size_t i = 0; i < len; i++) {
        double e = fabs(y[i] - ry[i]);
        if (e > worst) worst = e;
    }
    CHECK(worst <= 2e-5, "forward (%zu,%zu,%zu)/%zu %s: worst error %g", batch, channels,
          spatial, groups, lname, worst);
    for (size_t k = 0; k < saves; k++) {
        CHECK(fabs(mean[k] - rmean[k]) <= 1e-6 * (1.0 + fabs(rmean[k])), "save_mean[%zu]", k);
        CHECK(fabs(invstd[k] - rinvstd[k]) <= 1e-5 * rinvstd[k], "save_invstd[%zu]", k);
    }
    /* One thread, and in place: the same bits. */
    st = nk_groupnorm_forward(ctx1, s, groups, x, y1, gamma, beta, eps, mean1, invstd1);
    CHECK(st == NK_OK && same_bits(y, y1, len) && same_bits(mean, mean1, saves) &&
              same_bits(invstd, invstd1, saves),
          "forward %s: 1 thread differs from 2", lname);
    memcpy(y1, x, len * sizeof(float));
    st = nk_groupnorm_forward(ctx2, s, groups, y1, y1, gamma, beta, eps, NULL, NULL);
    CHECK(st == NK_OK && same_bits(y, y1, len), "forward %s: in place differs", lname);
    if (groups == channels) {
        st = nk_instancenorm_forward(ctx2, s, x, y1, gamma, beta, eps, mean1, invstd1);
        CHECK(st == NK_OK && same_bits(y, y1, len) && same_bits(mean, mean1, saves) &&
                  same_bits(invstd, invstd1, saves),
              "instance norm %s differs from group norm with groups = C", lname);
    }

    /* Backward. */
    st = nk_groupnorm_backward(ctx2, s, groups, x, dy, dx, gamma, mean, invstd, dgamma, dbeta);
    CHECK(st == NK_OK, "backward %s: status %d", lname, (int)st);
    ref_backward(&s, groups, x, dy, gamma, mean, invstd, rdx, rdg, rdb);
    double dx_scale = 0.0;
    for (size_t k = 0; k < saves; k++) {
        if (rinvstd[k] > dx_scale) dx_scale = rinvstd[k];
    }
    for (size_t i = 0; i < len; i++) {
        CHECK(fabs(dx[i] - rdx[i]) <= 1e-4 * dx_scale * (1.0 + fabs(dy[i])), "dx[%zu] %g vs %g",
              i, dx[i], rdx[i]);
    }
    for (size_t c = 0; c < channels; c++) {
        double count = (double)(batch * spatial);
        CHECK(fabs(dgamma[c] - rdg[c]) <= 1e-5 * count + 1e-5 * fabs(rdg[c]), "dgamma[%zu]", c);
        CHECK(fabs(dbeta[c] - rdb[c]) <= 1e-5 * count + 1e-5 * fabs(rdb[c]), "dbeta[%zu]", c);
    }
    st = nk_groupnorm_backward(ctx1, s, groups, x, dy, dx1, gamma, mean, invstd, dgamma1,
                               dbeta1);
    CHECK(st == NK_OK && same_bits(dx, dx1, len) && same_bits(dgamma, dgamma1, channels) &&
              same_bits(dbeta, dbeta1, channels),
          "backward %s: 1 thread differs from 2", lname);
    memcpy(dx1, dy, len * sizeof(float));
    st = nk_groupnorm_backward(ctx2, s, groups, x, dx1, dx1, gamma, mean, invstd, NULL, NULL);
    CHECK(st == NK_OK && same_bits(dx, dx1, len), "backward %s: in place differs", lname);

    free(x); free(y); free(y1); free(dy); free(dx); free(dx1); free(gamma); free(beta);
    free(mean); free(invstd); free(mean1); free(invstd1); free(dgamma); free(dbeta);
    free(dgamma1); free(dbeta1); free(ry); free(rdx); free(rmean); free(rinvstd); free(rdg);
    free(rdb);
}

static void test_errors(void) {
    enum { B = 2, C = 6, S = 5, LEN = B * C * S };
    float x[LEN], y[LEN], gamma[C], mean[B * C], invstd[B * C], dg[C];
    for (int i = 0; i < LEN; i++) x[i] = (float)i;
    for (int i = 0; i < C; i++) gamma[i] = 1.0f;
    for (int i = 0; i < B * C; i++) mean[i] = invstd[i] = 1.0f;
    for (int i = 0; i < LEN; i++) y[i] = -7.0f;
    for (int i = 0; i < C; i++) dg[i] = -7.0f;
    nk_shape s = {B, C, S, NK_LAYOUT_NCS};
    float y_before[LEN];
    memcpy(y_before, y, sizeof y);

    CHECK(nk_groupnorm_forward(NULL, s, 4, x, y, NULL, NULL, 1e-5f, NULL, NULL) ==
              NK_ERR_BAD_SHAPE,
          "groups not dividing C");
    CHECK(nk_groupnorm_forward(NULL, s, 0, x, y, NULL, NULL, 1e-5f, NULL, NULL) ==
              NK_ERR_BAD_SHAPE,
          "groups 0");
    CHECK(nk_groupnorm_forward(NULL, s, 3, NULL, y, NULL, NULL, 1e-5f, NULL, NULL) ==
              NK_ERR_NULL_POINTER,
          "x NULL");
    CHECK(nk_groupnorm_forward(NULL, s, 3, x, y, NULL, NULL, -1.0f, NULL, NULL) ==
              NK_ERR_BAD_ARGUMENT,
          "eps < 0");
    CHECK(nk_groupnorm_forward(NULL, s, 3, x, x + 1, NULL, NULL, 1e-5f, NULL, NULL) ==
              NK_ERR_ALIAS,
          "y overlapping x");
    CHECK(memcmp(y, y_before, sizeof y) == 0, "y written on error");
    nk_shape empty = {B, C, 0, NK_LAYOUT_NSC};
    CHECK(nk_instancenorm_forward(NULL, empty, NULL, NULL, NULL, NULL, 1e-5f, NULL, NULL) ==
              NK_ERR_BAD_SHAPE,
          "instance norm with spatial 0");
    CHECK(nk_groupnorm_backward(NULL, s, 3, x, y, x, gamma, mean, invstd, NULL, NULL) ==
              NK_ERR_ALIAS,
          "dx == x");
    CHECK(nk_groupnorm_backward(NULL, s, 3, x, y, NULL, gamma, NULL, invstd, dg, NULL) ==
              NK_ERR_NULL_POINTER,
          "save_mean NULL");
    for (int i = 0; i < C; i++) CHECK(dg[i] == -7.0f, "dgamma written on error");
    /* Empty data: dgamma and dbeta become zeros. */
    CHECK(nk_groupnorm_backward(NULL, empty, 3, NULL, NULL, NULL, NULL, mean, invstd, dg, NULL) ==
              NK_OK,
          "backward over no values");
    for (int i = 0; i < C; i++) CHECK(dg[i] == 0.0f, "dgamma over no values is 0");
}

/* ---- bf16 and f16 twins ----------------------------------------------------------------- */

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest, ties to even; NaN stays a quiet NaN. */
static nk_bf16 to_bf16(float f) {
    uint32_t u = float_bits(f);
    nk_bf16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h.bits = (uint16_t)((u >> 16) | 0x40u);
    } else {
        h.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return h;
}

static float from_bf16(nk_bf16 h) { return bits_float((uint32_t)h.bits << 16); }

static nk_f16 to_f16(float f) {
    uint32_t u = float_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    nk_f16 h;
    if (a > 0x7f800000u) {
        h.bits = (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    } else if (a >= 0x477ff000u) {
        h.bits = (uint16_t)(sign | 0x7c00u); /* 65520 and above round to infinity */
    } else if (a < 0x38800000u) {
        /* Subnormal (or zero): units of 2^-24, exact in float, rounded to nearest even. */
        h.bits = (uint16_t)(sign | (uint32_t)nearbyintf(fabsf(f) * 16777216.0f));
    } else {
        uint32_t m = a + 0x0fffu + ((a >> 13) & 1u) - 0x38000000u;
        h.bits = (uint16_t)(sign | (m >> 13));
    }
    return h;
}

static float from_f16(nk_f16 h) {
    uint32_t e = (h.bits >> 10) & 0x1fu, m = h.bits & 0x3ffu;
    float v;
    if (e == 0) {
        v = ldexpf((float)m, -24);
    } else if (e == 31) {
        v = m ? NAN : INFINITY;
    } else {
        v = ldexpf((float)(m | 0x400u), (int)e - 25);
    }
    return (h.bits & 0x8000u) ? -v : v;
}

/* The twins on a small shape, both layouts: each output is the float function's on the widened
 * input, rounded once; statistics and parameter gradients bitwise the float ones. */
static void test_halves(nk_context *ctx) {
    enum { B = 2, C = 6, S = 7, G = 3, LEN = B * C * S };
    uint64_t state = g_state; /* the other tests' data stay as they were */
    for (int l = 0; l < 2; l++) {
        nk_shape s = {B, C, S, l == 0 ? NK_LAYOUT_NCS : NK_LAYOUT_NSC};
        nk_bf16 xb[LEN], dyb[LEN], yb[LEN], dxb[LEN];
        nk_f16 xh[LEN], dyh[LEN], yh[LEN], dxh[LEN];
        float xw[LEN], dyw[LEN], y[LEN], dx[LEN], gamma[C], beta[C];
        float m[B * C], is[B * C], mh[B * C], ish[B * C], dg[C], db[C], dgh[C], dbh[C];
        for (int c = 0; c < C; c++) {
            gamma[c] = (float)(0.5 + uniform01());
            beta[c] = (float)(uniform01() - 0.5);
        }
        for (int t = 0; t < 2; t++) { /* 0: bf16, 1: f16 */
            for (int i = 0; i < LEN; i++) {
                float v = (float)((t == 0 ? 1000.0 : 100.0) + normal());
                float d = (float)normal();
                if (t == 0) {
                    xb[i] = to_bf16(v);
                    dyb[i] = to_bf16(d);
                    xw[i] = from_bf16(xb[i]);
                    dyw[i] = from_bf16(dyb[i]);
                } else {
                    xh[i] = to_f16(v);
                    dyh[i] = to_f16(d);
                    xw[i] = from_f16(xh[i]);
                    dyw[i] = from_f16(dyh[i]);
                }
            }
            const char *name = t == 0 ? "bf16" : "f16";
            /* Group norm forward. */
            CHECK(nk_groupnorm_forward(ctx, s, G, xw, y, gamma, beta, 1e-5f, m, is) == NK_OK,
                  "float groupnorm forward");
            nk_status st = t == 0 ? nk_groupnorm_forward_bf16(ctx, s, G, xb, yb, gamma, beta,
                                                              1e-5f, mh, ish)
                                  : nk_groupnorm_forward_f16(ctx, s, G, xh, yh, gamma, beta,
                                                             1e-5f, mh, ish);
            CHECK(st == NK_OK, "%s groupnorm forward", name);
            for (int i = 0; i < LEN; i++) {
                int ok = t == 0 ? yb[i].bits == to_bf16(y[i]).bits : yh[i].bits == to_f16(y[i]).bits;
                CHECK(ok, "%s groupnorm forward y[%d]", name, i);
            }
            CHECK(same_bits(m, mh, B * G) && same_bits(is, ish, B * G), "%s groupnorm saves",
                  name);
            /* Group norm backward. */
            CHECK(nk_groupnorm_backward(ctx, s, G, xw, dyw, dx, gamma, m, is, dg, db) == NK_OK,
                  "float groupnorm backward");
            st = t == 0 ? nk_groupnorm_backward_bf16(ctx, s, G, xb, dyb, dxb, gamma, m, is, dgh,
                                                     dbh)
                        : nk_groupnorm_backward_f16(ctx, s, G, xh, dyh, dxh, gamma, m, is, dgh,
                                                    dbh);
            CHECK(st == NK_OK, "%s groupnorm backward", name);
            for (int i = 0; i < LEN; i++) {
                int ok = t == 0 ? dxb[i].bits == to_bf16(dx[i]).bits
                                : dxh[i].bits == to_f16(dx[i]).bits;
                CHECK(ok, "%s groupnorm backward dx[%d]", name, i);
            }
            CHECK(same_bits(dg, dgh, C) && same_bits(db, dbh, C), "%s dgamma, dbeta", name);
            /* Instance norm forward. */
            CHECK(nk_instancenorm_forward(ctx, s, xw, y, gamma, beta, 1e-5f, m, is) == NK_OK,
                  "float instancenorm forward");
            st = t == 0 ? nk_instancenorm_forward_bf16(ctx, s, xb, yb, gamma, beta, 1e-5f, mh, ish)
                        : nk_instancenorm_forward_f16(ctx, s, xh, yh, gamma, beta, 1e-5f, mh, ish);
            CHECK(st == NK_OK, "%s instancenorm forward", name);
            for (int i = 0; i < LEN; i++) {
                int ok = t == 0 ? yb[i].bits == to_bf16(y[i]).bits : yh[i].bits == to_f16(y[i]).bits;
                CHECK(ok, "%s instancenorm forward y[%d]", name, i);
            }
            CHECK(same_bits(m, mh, B * C) && same_bits(is, ish, B * C), "%s instancenorm saves",
                  name);
        }
        /* Errors: y overlapping x is NK_ERR_ALIAS, NULL x NK_ERR_NULL_POINTER; nothing
         * written. */
        memcpy(yb, xb, sizeof yb);
        CHECK(nk_groupnorm_forward_bf16(ctx, s, G, yb, yb + 1, NULL, NULL, 1e-5f, NULL, NULL) ==
                  NK_ERR_ALIAS,
              "bf16 y overlapping x");
        CHECK(memcmp(yb, xb, sizeof yb) == 0, "bf16 written on error");
        CHECK(nk_instancenorm_forward_f16(ctx, s, NULL, yh, NULL, NULL, 1e-5f, NULL, NULL) ==
                  NK_ERR_NULL_POINTER,
              "f16 x NULL");
    }
    g_state = state;
}

int main(void) {
    nk_context *ctx2 = NULL, *ctx1 = NULL;
    if (nk_context_create(2, &ctx2) != NK_OK || nk_context_create(1, &ctx1) != NK_OK) {
        fprintf(stderr, "cannot create contexts\n");
        return 1;
    }
    test_errors();
    test_halves(ctx2);
    const nk_isa isas[] = {NK_ISA_PORTABLE, NK_ISA_AVX2, NK_ISA_AVX512, NK_ISA_NEON};
    /* (batch, channels, spatial, groups): groups = 1, groups = C, C = 1, spatial = 1, odd
     * sizes, and large enough to run on several threads. */
    static const size_t shapes[][4] = {{1, 1, 1, 1},   {2, 6, 7, 3},    {3, 5, 1, 5},
                                       {2, 8, 33, 1},  {1, 12, 17, 12}, {4, 32, 64, 8},
                                       {2, 16, 3000, 4}, {300, 24, 1, 6}};
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++) {
        if (nk_context_set_isa(ctx2, isas[i]) != NK_OK) continue;
        CHECK(nk_context_set_isa(ctx1, isas[i]) == NK_OK, "set_isa on the 1-thread context");
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            for (int l = 0; l < 2; l++) {
                nk_layout layout = l == 0 ? NK_LAYOUT_NCS : NK_LAYOUT_NSC;
                run_shape(ctx2, ctx1, shapes[k][0], shapes[k][1], shapes[k][2], shapes[k][3],
                          layout, k % 2 ? 1000.0 : 0.0);
            }
        }
    }
    nk_context_destroy(ctx1);
    nk_context_destroy(ctx2);
    printf("groupnorm_api: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
