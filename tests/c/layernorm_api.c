/*
 * Layer norm, RMS norm and weight standardization through the C API, checked from C (and,
 * compiled as C++, from C++) against naive double-precision loops written in this file.
 *
 * Every case runs on every ISA the CPU has, on a 2-thread context and on the default (NULL)
 * context; results must be bitwise identical across thread counts and between in-place and
 * out-of-place calls. Error cases check the status and that no byte of any buffer changed.
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

static void check_at(int ok, int line, const char *what, size_t index, double got, double want) {
    g_checks++;
    if (ok) {
        return;
    }
    g_failures++;
    if (g_failures <= 100) {
        fprintf(stderr, "FAIL (line %d): %s at %zu: got %.9g, want %.9g (last error: \"%s\")\n",
                line, what, index, got, want, nk_last_error_message());
    }
}

#define CHECK(cond, what) check_at((cond) ? 1 : 0, __LINE__, (what), 0, 0.0, 0.0)
#define CHECK_NEAR(got, want, tol, what, i)                                                    \
    check_at(fabs((double)(got) - (double)(want)) <= (tol), __LINE__, (what), (i), (got), (want))

static float *alloc_f32(size_t n) {
    float *p = (float *)calloc(n ? n : 1, sizeof(float));
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static double uniform01(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (double)((g_rng * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

static double normal01(void) {
    double u1 = 1.0 - uniform01();
    double u2 = uniform01();
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void fill_normal(float *p, size_t n, double offset, double scale) {
    for (size_t i = 0; i < n; i++) {
        p[i] = (float)(offset + scale * normal01());
    }
}

static int same_floats(const float *a, const float *b, size_t n) {
    return n == 0 || memcmp(a, b, n * sizeof(float)) == 0;
}

/* Row statistics in double: mean (0 if !centered) and 1 / sqrt(var + eps). */
static void ref_stats(const float *row, size_t cols, float eps, int centered, double *mean,
                      double *inv) {
    double m = 0.0, v = 0.0;
    if (centered) {
        for (size_t j = 0; j < cols; j++) {
            m += row[j];
        }
        m /= (double)cols;
    }
    for (size_t j = 0; j < cols; j++) {
        v += ((double)row[j] - m) * ((double)row[j] - m);
    }
    v /= (double)cols;
    *mean = m;
    *inv = 1.0 / sqrt(v + (double)eps);
}

/* One shape: forward and backward of layer norm (centered) or RMS norm, against the loops. */
static void test_shape(nk_context *ctx, size_t rows, size_t cols, double offset, int centered) {
    size_t n = rows * cols;
    float eps = 1e-5f;
    float *x = alloc_f32(n), *y = alloc_f32(n), *y2 = alloc_f32(n), *dy = alloc_f32(n);
    float *dx = alloc_f32(n), *dx2 = alloc_f32(n);
    float *gamma = alloc_f32(cols), *beta = alloc_f32(cols), *dgamma = alloc_f32(cols);
    float *dbeta = alloc_f32(cols), *dgamma2 = alloc_f32(cols), *dbeta2 = alloc_f32(cols);
    float *mean = alloc_f32(rows), *inv = alloc_f32(rows);
    fill_normal(x, n, offset, 1.0);
    fill_normal(dy, n, 0.0, 1.0);
    fill_normal(gamma, cols, 1.0, 0.2);
    fill_normal(beta, cols, 0.0, 0.5);

    nk_status st;
    if (centered) {
        st = nk_layernorm_forward(ctx, rows, cols, x, y, gamma, beta, eps, mean, inv);
    } else {
        st = nk_rmsnorm_forward(ctx, rows, cols, x, y, gamma, eps, inv);
    }
    CHECK(st == NK_OK, "forward status");
    if (centered) {
        st = nk_layernorm_backward(ctx, rows, cols, x, dy, dx, gamma, mean, inv, dgamma, dbeta);
    } else {
        st = nk_rmsnorm_backward(ctx, rows, cols, x, dy, dx, gamma, inv, dgamma);
    }
    CHECK(st == NK_OK, "backward status");

    double *dg = (double *)calloc(cols, sizeof(double));
    double *db = (double *)calloc(cols, sizeof(double));
    double *sg = (double *)calloc(cols, sizeof(double));
    double *sb = (double *)calloc(cols, sizeof(double));
    for (size_t r = 0; r < rows; r++) {
        double m, s;
        const float *row = x + r * cols;
        ref_stats(row, cols, eps, centered, &m, &s);
        CHECK_NEAR(inv[r], s, 2e-6 * s, "saved inverse std", r);
        if (centered) {
            CHECK_NEAR(mean[r], m, 2e-6 / s + 1e-7 * fabs(m), "saved mean", r);
        }
        for (size_t j = 0; j < cols; j++) {
            double xhat = ((double)row[j] - m) * s;
            double want = xhat * gamma[j] + (centered ? beta[j] : 0.0);
            double tol = 5e-6 * (fabs(gamma[j]) * (1.0 + fabs(xhat)) + fabs(beta[j]));
            CHECK_NEAR(y[r * cols + j], want, tol, "y", r * cols + j);
        }
        /* Backward with the saved statistics, in double. */
        double ms = centered ? (double)mean[r] : 0.0, is = inv[r];
        double sum_g = 0.0, sum_gx = 0.0, abs_g = 0.0, abs_gx = 0.0;
        for (size_t j = 0; j < cols; j++) {
            double xhat = ((double)row[j] - ms) * is;
            double g = (double)dy[r * cols + j] * gamma[j];
            sum_g += g;
            sum_gx += g * xhat;
            abs_g += fabs(g);
            abs_gx += fabs(g * xhat);
            dg[j] += (double)dy[r * cols + j] * xhat;
            db[j] += dy[r * cols + j];
            sg[j] += fabs((double)dy[r * cols + j] * xhat);
            sb[j] += fabs((double)dy[r * cols + j]);
        }
        double mg = centered ? sum_g / (double)cols : 0.0, mgx = sum_gx / (double)cols;
        for (size_t j = 0; j < cols; j++) {
            double xhat = ((double)row[j] - ms) * is;
            double g = (double)dy[r * cols + j] * gamma[j];
            double want = is * (g - mg - xhat * mgx);
            double tol = 2e-5 * is * (fabs(g) + abs_g / (double)cols + fabs(xhat) * abs_gx / (double)cols);
            CHECK_NEAR(dx[r * cols + j], want, tol, "dx", r * cols + j);
        }
    }
    for (size_t j = 0; j < cols; j++) {
        CHECK_NEAR(dgamma[j], dg[j], 2e-5 * sg[j], "dgamma", j);
        if (centered) {
            CHECK_NEAR(dbeta[j], db[j], 2e-5 * sb[j], "dbeta", j);
        }
    }

    /* In place: the same bits; and the default context (all cores) where it uses the same
     * ISA. */
    for (int pass = 0; pass < 2; pass++) {
        nk_context *c = pass == 0 ? ctx : NULL;
        if (pass == 1 && nk_context_isa(ctx) != nk_context_isa(NULL)) {
            break;
        }
        memcpy(y2, x, n * sizeof(float));
        if (centered) {
            st = nk_layernorm_forward(c, rows, cols, y2, y2, gamma, beta, eps, NULL, NULL);
        } else {
            st = nk_rmsnorm_forward(c, rows, cols, y2, y2, gamma, eps, NULL);
        }
        CHECK(st == NK_OK && same_floats(y, y2, n), "forward in place");
        memcpy(dx2, dy, n * sizeof(float));
        if (centered) {
            st = nk_layernorm_backward(c, rows, cols, x, dx2, dx2, gamma, mean, inv, dgamma2,
                                       dbeta2);
            CHECK(st == NK_OK && same_floats(dbeta, dbeta2, cols), "dbeta in place");
        } else {
            st = nk_rmsnorm_backward(c, rows, cols, x, dx2, dx2, gamma, inv, dgamma2);
        }
        CHECK(st == NK_OK && same_floats(dx, dx2, n) && same_floats(dgamma, dgamma2, cols),
              "backward in place");
    }

    free(dg);
    free(db);
    free(sg);
    free(sb);
    free(x);
    free(y);
    free(y2);
    free(dy);
    free(dx);
    free(dx2);
    free(gamma);
    free(beta);
    free(dgamma);
    free(dbeta);
    free(dgamma2);
    free(dbeta2);
    free(mean);
    free(inv);
}

static void test_standardize(nk_context *ctx, size_t c_out, size_t fan_in) {
    size_t n = c_out * fan_in;
    float *w = alloc_f32(n), *out = alloc_f32(n), *w2 = alloc_f32(n);
    fill_normal(w, n, 0.01, 0.05);
    CHECK(nk_weight_standardize(ctx, c_out, fan_in, w, out, 1e-5f) == NK_OK, "standardize");
    for (size_t o = 0; o < c_out; o++) {
        double m, s;
        ref_stats(w + o * fan_in, fan_in, 1e-5f, 1, &m, &s);
        for (size_t j = 0; j < fan_in; j++) {
            double want = ((double)w[o * fan_in + j] - m) * s;
            CHECK_NEAR(out[o * fan_in + j], want, 5e-6 * (1.0 + fabs(want)), "standardized",
                       o * fan_in + j);
        }
    }
    memcpy(w2, w, n * sizeof(float));
    CHECK(nk_weight_standardize(ctx, c_out, fan_in, w2, w2, 1e-5f) == NK_OK &&
              same_floats(w2, out, n),
          "standardize in place");
    free(w);
    free(out);
    free(w2);
}

/* ---- bf16 and f16 twins: tiny conversions, then each twin against the float function on the
 * widened input, output rounded to nearest even, statistics and parameter gradients bitwise. */

static uint32_t bits_of_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_of_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static float from_bf16(nk_bf16 h) { return f32_of_bits((uint32_t)h.bits << 16); }

/* Round to nearest even; NaN stays NaN (quiet). */
static nk_bf16 to_bf16(float f) {
    uint32_t u = bits_of_f32(f);
    nk_bf16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h.bits = (uint16_t)((u >> 16) | 0x0040u);
        return h;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    h.bits = (uint16_t)(u >> 16);
    return h;
}

static float from_f16(nk_f16 h) {
    uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16;
    uint32_t exp = (uint32_t)(h.bits >> 10) & 0x1fu;
    uint32_t man = (uint32_t)h.bits & 0x3ffu;
    if (exp == 0) { /* zero or subnormal: man * 2^-24, exact */
        return f32_of_bits(bits_of_f32(ldexpf((float)man, -24)) | sign);
    }
    if (exp == 31) {
        return f32_of_bits(sign | 0x7f800000u | (man << 13));
    }
    return f32_of_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

/* Round to nearest even; beyond the range infinity; subnormals kept; NaN quiet. */
static nk_f16 to_f16(float f) {
    uint32_t u = bits_of_f32(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    nk_f16 h;
    if (a > 0x7f800000u) {
        h.bits = (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    } else if (a >= 0x477ff000u) { /* 65520 and above (infinity included) */
        h.bits = (uint16_t)(sign | 0x7c00u);
    } else if (a >= 0x38800000u) { /* normal: 2^-14 and above */
        uint32_t r = a + 0x0fffu + ((a >> 13) & 1u);
        h.bits = (uint16_t)(sign | ((r - 0x38000000u) >> 13));
    } else { /* subnormal or zero: the multiple of 2^-24, ties to even */
        float m = nearbyintf(f32_of_bits(a) * 16777216.0f);
        h.bits = (uint16_t)(sign | (uint32_t)m);
    }
    return h;
}

/* One shape of layer and RMS norm, forward and backward, through the T twins (suffix S):
 * outputs are the float function's on the widened input, rounded; statistics bitwise. */
#define DEFINE_HALF_TEST(T, S, TO, FROM)                                                       \
    static void test_half_##S(nk_context *ctx, size_t rows, size_t cols) {                     \
        size_t n = rows * cols;                                                                \
        float eps = 1e-5f;                                                                     \
        T *x = (T *)calloc(n, sizeof(T)), *dy = (T *)calloc(n, sizeof(T));                     \
        T *y = (T *)calloc(n, sizeof(T)), *dx = (T *)calloc(n, sizeof(T));                     \
        float *xw = alloc_f32(n), *dyw = alloc_f32(n), *y32 = alloc_f32(n);                    \
        float *dx32 = alloc_f32(n), *gamma = alloc_f32(cols), *beta = alloc_f32(cols);         \
        float *m32 = alloc_f32(rows), *i32 = alloc_f32(rows), *mh = alloc_f32(rows);           \
        float *ih = alloc_f32(rows), *dg32 = alloc_f32(cols), *db32 = alloc_f32(cols);         \
        float *dgh = alloc_f32(cols), *dbh = alloc_f32(cols);                                  \
        if (x == NULL || dy == NULL || y == NULL || dx == NULL) {                              \
            fprintf(stderr, "out of memory\n");                                                \
            exit(2);                                                                           \
        }                                                                                      \
        fill_normal(y32, n, 300.0, 7.0);                                                       \
        fill_normal(dx32, n, 0.0, 1.0);                                                        \
        for (size_t i = 0; i < n; i++) {                                                       \
            x[i] = TO(y32[i]);                                                                 \
            dy[i] = TO(dx32[i]);                                                               \
            xw[i] = FROM(x[i]);                                                                \
            dyw[i] = FROM(dy[i]);                                                              \
        }                                                                                      \
        fill_normal(gamma, cols, 1.0, 0.2);                                                    \
        fill_normal(beta, cols, 0.0, 0.5);                                                     \
        for (int centered = 0; centered < 2; centered++) {                                     \
            nk_status a, b;                                                                    \
            if (centered) {                                                                    \
                a = nk_layernorm_forward(ctx, rows, cols, xw, y32, gamma, beta, eps, m32, i32); \
                b = nk_layernorm_forward_##S(ctx, rows, cols, x, y, gamma, beta, eps, mh, ih);  \
            } else {                                                                           \
                a = nk_rmsnorm_forward(ctx, rows, cols, xw, y32, gamma, eps, i32);             \
                b = nk_rmsnorm_forward_##S(ctx, rows, cols, x, y, gamma, eps, ih);             \
            }                                                                                  \
            CHECK(a == NK_OK && b == NK_OK, #S " forward status");                             \
            for (size_t i = 0; i < n; i++) {                                                   \
                check_at(y[i].bits == TO(y32[i]).bits, __LINE__, #S " forward: rounded y", i,  \
                         FROM(y[i]), y32[i]);                                                  \
            }                                                                                  \
            CHECK(same_floats(ih, i32, rows) && (!centered || same_floats(mh, m32, rows)),     \
                  #S " forward: saved statistics");                                            \
            if (centered) {                                                                    \
                a = nk_layernorm_backward(ctx, rows, cols, xw, dyw, dx32, gamma, m32, i32,     \
                                          dg32, db32);                                         \
                b = nk_layernorm_backward_##S(ctx, rows, cols, x, dy, dx, gamma, m32, i32,     \
                                              dgh, dbh);                                       \
            } else {                                                                           \
                a = nk_rmsnorm_backward(ctx, rows, cols, xw, dyw, dx32, gamma, i32, dg32);     \
                b = nk_rmsnorm_backward_##S(ctx, rows, cols, x, dy, dx, gamma, i32, dgh);      \
            }                                                                                  \
            CHECK(a == NK_OK && b == NK_OK, #S " backward status");                            \
            for (size_t i = 0; i < n; i++) {                                                   \
                check_at(dx[i].bits == TO(dx32[i]).bits, __LINE__, #S " backward: rounded dx", \
                         i, FROM(dx[i]), dx32[i]);                                             \
            }                                                                                  \
            CHECK(same_floats(dgh, dg32, cols) && (!centered || same_floats(dbh, db32, cols)), \
                  #S " backward: parameter gradients");                                        \
            /* In place: the same bits. */                                                     \
            memcpy(dx, dy, n * sizeof(T));                                                     \
            if (centered) {                                                                    \
                b = nk_layernorm_backward_##S(ctx, rows, cols, x, dx, dx, gamma, m32, i32,     \
                                              NULL, NULL);                                     \
            } else {                                                                           \
                b = nk_rmsnorm_backward_##S(ctx, rows, cols, x, dx, dx, gamma, i32, NULL);     \
            }                                                                                  \
            CHECK(b == NK_OK, #S " backward in place status");                                 \
            for (size_t i = 0; i < n; i++) {                                                   \
                check_at(dx[i].bits == TO(dx32[i]).bits, __LINE__, #S " backward in place", i, \
                         FROM(dx[i]), dx32[i]);                                                \
            }                                                                                  \
        }                                                                                      \
        /* Errors: NULL data, y overlapping x (not equal), dx == x; nothing written. */        \
        memcpy(dx, dy, n * sizeof(T));                                                         \
        memcpy(dgh, dg32, cols * sizeof(float));                                               \
        memcpy(ih, i32, rows * sizeof(float));                                                 \
        if (n > 1) {                                                                           \
            CHECK(nk_layernorm_forward_##S(ctx, rows, cols, NULL, y, NULL, NULL, eps, NULL,    \
                                           NULL) == NK_ERR_NULL_POINTER,                       \
                  #S " layernorm forward NULL x");                                             \
            CHECK(nk_rmsnorm_forward_##S(ctx, rows, cols, dx, dx + 1, NULL, eps, ih) ==        \
                      NK_ERR_ALIAS,                                                            \
                  #S " rmsnorm forward y overlapping x");                                      \
            CHECK(nk_layernorm_backward_##S(ctx, rows, cols, dx, dy, dx, NULL, m32, i32, dgh,  \
                                            NULL) == NK_ERR_ALIAS,                             \
                  #S " layernorm backward dx == x");                                           \
            CHECK(nk_rmsnorm_backward_##S(ctx, rows, cols, x, NULL, dx, NULL, i32, dgh) ==     \
                      NK_ERR_NULL_POINTER,                                                     \
                  #S " rmsnorm backward NULL dy");                                             \
            CHECK(memcmp(dx, dy, n * sizeof(T)) == 0 &&                                        \
                      same_floats(dgh, dg32, cols) && same_floats(ih, i32, rows),              \
                  #S " nothing written on error");                                             \
        }                                                                                      \
        free(x);                                                                               \
        free(dy);                                                                              \
        free(y);                                                                               \
        free(dx);                                                                              \
        free(xw);                                                                              \
        free(dyw);                                                                             \
        free(y32);                                                                             \
        free(dx32);                                                                            \
        free(gamma);                                                                           \
        free(beta);                                                                            \
        free(m32);                                                                             \
        free(i32);                                                                             \
        free(mh);                                                                              \
        free(ih);                                                                              \
        free(dg32);                                                                            \
        free(db32);                                                                            \
        free(dgh);                                                                             \
        free(dbh);                                                                             \
    }

DEFINE_HALF_TEST(nk_bf16, bf16, to_bf16, from_bf16)
DEFINE_HALF_TEST(nk_f16, f16, to_f16, from_f16)

/* The conversions of this file on a few values whose rounding is known. */
static void test_conversions(void) {
    CHECK(to_bf16(1.0f).bits == 0x3f80u && to_bf16(-2.0f).bits == 0xc000u, "bf16 exact");
    CHECK(to_bf16(f32_of_bits(0x3f808000u)).bits == 0x3f80u, "bf16 tie to even (down)");
    CHECK(to_bf16(f32_of_bits(0x3f818000u)).bits == 0x3f82u, "bf16 tie to even (up)");
    CHECK(to_f16(1.0f).bits == 0x3c00u && to_f16(65504.0f).bits == 0x7bffu, "f16 exact");
    CHECK(to_f16(65520.0f).bits == 0x7c00u && to_f16(65519.0f).bits == 0x7bffu, "f16 overflow");
    CHECK(to_f16(ldexpf(1.0f, -24)).bits == 0x0001u && to_f16(ldexpf(1.0f, -25)).bits == 0,
          "f16 subnormal, tie to even");
    CHECK(to_f16(-0.0f).bits == 0x8000u && from_f16(to_f16(3.0e-5f)) == ldexpf(503.0f, -24),
          "f16 sign, subnormal round trip");
    nk_f16 s = {0x03ffu};
    CHECK(from_f16(s) == ldexpf(1023.0f, -24) && to_f16(from_f16(s)).bits == 0x03ffu,
          "f16 largest subnormal");
}

/* Errors: the status, and nothing written. */
static void test_errors(void) {
    float buf[64];
    float saved[64];
    for (int i = 0; i < 64; i++) {
        buf[i] = (float)i * 0.25f + 1.0f;
    }
    memcpy(saved, buf, sizeof buf);
    float *x = buf, *y = buf + 16, *m = buf + 32, *s = buf + 36, *g = buf + 40, *dg = buf + 48;
    CHECK(nk_layernorm_forward(NULL, 2, 3, NULL, y, NULL, NULL, 1e-5f, NULL, NULL) ==
              NK_ERR_NULL_POINTER,
          "layernorm forward NULL x");
    CHECK(nk_layernorm_forward(NULL, 2, 3, x, y, NULL, NULL, -1.0f, m, s) == NK_ERR_BAD_ARGUMENT,
          "layernorm forward eps < 0");
    CHECK(nk_layernorm_forward(NULL, SIZE_MAX / 2, 3, x, y, NULL, NULL, 1e-5f, m, s) ==
              NK_ERR_OVERFLOW,
          "layernorm forward overflow");
    CHECK(nk_layernorm_forward(NULL, 2, 3, x, x + 1, NULL, NULL, 1e-5f, m, s) == NK_ERR_ALIAS,
          "layernorm forward y overlapping x");
    CHECK(nk_layernorm_backward(NULL, 2, 3, x, y, x, g, m, s, dg, NULL) == NK_ERR_ALIAS,
          "layernorm backward dx == x");
    CHECK(nk_layernorm_backward(NULL, 2, 3, x, y, NULL, g, NULL, s, dg, NULL) ==
              NK_ERR_NULL_POINTER,
          "layernorm backward without save_mean");
    CHECK(nk_rmsnorm_forward(NULL, 2, 3, x, y, NULL, NAN, s) == NK_ERR_BAD_ARGUMENT,
          "rmsnorm forward eps NaN");
    CHECK(nk_rmsnorm_backward(NULL, 2, 3, x, y, NULL, g, NULL, dg) == NK_ERR_NULL_POINTER,
          "rmsnorm backward without save_invrms");
    CHECK(nk_rmsnorm_backward(NULL, 2, 3, x, y, NULL, g, s, g) == NK_ERR_ALIAS,
          "rmsnorm backward dgamma == gamma");
    CHECK(nk_weight_standardize(NULL, 2, 3, x, NULL, 0.0f) == NK_ERR_NULL_POINTER,
          "standardize NULL w_out");
    CHECK(nk_weight_standardize(NULL, 2, 3, x, x + 2, 0.0f) == NK_ERR_ALIAS,
          "standardize overlapping");
    CHECK(memcmp(buf, saved, sizeof buf) == 0, "nothing written on error");
    /* Empty calls. */
    CHECK(nk_layernorm_forward(NULL, 0, 7, NULL, NULL, NULL, NULL, 1e-5f, NULL, NULL) == NK_OK,
          "layernorm forward, no rows");
    CHECK(nk_rmsnorm_forward(NULL, 4, 0, NULL, NULL, NULL, 1e-5f, NULL) == NK_OK,
          "rmsnorm forward, no columns");
    CHECK(nk_weight_standardize(NULL, 0, 0, NULL, NULL, 0.0f) == NK_OK, "standardize, empty");
    CHECK(nk_layernorm_backward(NULL, 0, 3, NULL, NULL, NULL, NULL, NULL, NULL, dg, dg + 4) ==
              NK_OK &&
              dg[0] == 0.0f && dg[2] == 0.0f && dg[4] == 0.0f && dg[6] == 0.0f,
          "layernorm backward, no rows: zero sums");
}

int main(void) {
    nk_context *ctx = NULL;
    if (nk_context_create(2, &ctx) != NK_OK || ctx == NULL) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    static const nk_isa all[] = {NK_ISA_PORTABLE, NK_ISA_AVX2, NK_ISA_AVX512, NK_ISA_NEON};
    static const size_t shapes[][2] = {{1, 1}, {1, 768}, {3, 7}, {5, 33}, {64, 300}, {2, 9000}};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (nk_context_set_isa(ctx, all[i]) != NK_OK) {
            continue; /* not on this CPU */
        }
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            for (int centered = 0; centered < 2; centered++) {
                test_shape(ctx, shapes[k][0], shapes[k][1], 1.0, centered);
            }
        }
        test_shape(ctx, 4, 1000, 10000.0, 1);
        test_standardize(ctx, 16, 27);
        test_standardize(ctx, 3, 1);
        test_half_bf16(ctx, 5, 37);
        test_half_f16(ctx, 5, 37);
        test_half_bf16(ctx, 3, 1);
        test_half_f16(ctx, 130, 257);
    }
    test_half_bf16(NULL, 2, 9000);
    test_half_f16(NULL, 1, 1);
    test_conversions();
    test_errors();
    nk_context_destroy(ctx);
    printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures > 0 ? 1 : 0;
}
