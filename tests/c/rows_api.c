/*
 * Row norms over strided rows of mixed types (nk_layernorm_forward_rows,
 * nk_rmsnorm_forward_rows) through the C API, checked from C (and, compiled as C++, from C++)
 * against plain scalar loops written in this file:
 *
 * - the fused residual + bias add with the sum stored (f32 residual stream, bf16 activations in
 *   strided rows): the stored sum bitwise equal to `(float)(x + residual) + bias` rounded to the
 *   sum's type, the output near a double-precision normalization of that sum and bitwise equal
 *   to the packed float call on it; in place over the residual or over x, bitwise the same;
 * - QK-norm in place: RMS norm over each head of 128 within the rows of a packed bf16 QKV buffer
 *   (rows = tokens, stride = 3 * 4096), one call per head offset; V untouched, and bitwise the
 *   out-of-place result;
 * - int8 output with per-row scales: an all-zero row (scale 0, zeros), a row with a NaN (scale
 *   NaN, zeros), and the others bitwise the contract's quantization of the float output;
 * - errors (stride below cols, i8 input, partial overlaps, ...): the status, and no byte of any
 *   buffer changed.
 *
 * Every case runs on every ISA the CPU has, on a 2-thread context, and on the default context.
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
#define CHECK_AT(cond, what, i, got, want)                                                     \
    check_at((cond) ? 1 : 0, __LINE__, (what), (i), (double)(got), (double)(want))
#define CHECK_NEAR(got, want, tol, what, i)                                                    \
    check_at(fabs((double)(got) - (double)(want)) <= (tol), __LINE__, (what), (i), (got), (want))

static void *alloc_bytes(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}
static float *alloc_f32(size_t n) { return (float *)alloc_bytes(n * sizeof(float)); }
static nk_bf16 *alloc_bf16(size_t n) { return (nk_bf16 *)alloc_bytes(n * sizeof(nk_bf16)); }

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;

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

/* Same value, with any NaN equal to any NaN. */
static int same_f32(float a, float b) {
    return (isnan(a) && isnan(b)) || bits_of_f32(a) == bits_of_f32(b);
}
static int same_bf16(nk_bf16 a, nk_bf16 b) {
    return (isnan(from_bf16(a)) && isnan(from_bf16(b))) || a.bits == b.bits;
}

static nk_rows mk_rows(void *data, nk_dtype dtype, size_t stride) {
    nk_rows r;
    r.data = data;
    r.dtype = dtype;
    r.stride = stride;
    return r;
}
static nk_rows none(void) { return mk_rows(NULL, NK_DTYPE_F32, 0); }

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

/* Either norm through the rows entry point (beta and save_mean ignored for RMS). */
static nk_status norm_rows(nk_context *ctx, int centered, size_t rows, size_t cols, nk_rows x,
                           nk_rows residual, const float *bias, nk_rows sum, nk_rows y,
                           const float *gamma, const float *beta, float eps, float *save_mean,
                           float *save_inv, float *y_scale) {
    if (centered) {
        return nk_layernorm_forward_rows(ctx, rows, cols, x, residual, bias, sum, y, gamma, beta,
                                         eps, save_mean, save_inv, y_scale);
    }
    return nk_rmsnorm_forward_rows(ctx, rows, cols, x, residual, bias, sum, y, gamma, eps,
                                   save_inv, y_scale);
}

/* The packed float function: the unfused composition's second step. */
static nk_status norm_packed(nk_context *ctx, int centered, size_t rows, size_t cols,
                             const float *x, float *y, const float *gamma, const float *beta,
                             float eps, float *save_mean, float *save_inv) {
    if (centered) {
        return nk_layernorm_forward(ctx, rows, cols, x, y, gamma, beta, eps, save_mean, save_inv);
    }
    return nk_rmsnorm_forward(ctx, rows, cols, x, y, gamma, eps, save_inv);
}

/*
 * Transformer block step: residual stream f32 (packed), activations x bf16 in rows of stride
 * `xs` (> cols), bias f32; sum f32 in rows of stride cols + 3 and y bf16 packed. Then in place:
 * sum over the residual, y over x, and sum over x (bf16: the rounded sum is what is normalized).
 */
static void test_fused(nk_context *ctx, size_t rows, size_t cols, int centered) {
    const float eps = 1e-5f;
    const size_t xs = cols + 5, ss = cols + 3;
    const size_t nx = (rows - 1) * xs + cols, ns = (rows - 1) * ss + cols, n = rows * cols;
    nk_bf16 *x = alloc_bf16(nx), *x2 = alloc_bf16(nx), *y = alloc_bf16(n), *y2 = alloc_bf16(n);
    float *res = alloc_f32(n), *res2 = alloc_f32(n), *sum = alloc_f32(ns), *h = alloc_f32(n);
    float *bias = alloc_f32(cols), *gamma = alloc_f32(cols), *beta = alloc_f32(cols);
    float *yf = alloc_f32(n), *m = alloc_f32(rows), *inv = alloc_f32(rows);
    float *m2 = alloc_f32(rows), *inv2 = alloc_f32(rows);
    float *tmp = alloc_f32(n);
    for (size_t i = 0; i < nx; i++) {
        x[i] = to_bf16((float)normal01());
    }
    for (size_t r = 0; r + 1 < rows; r++) { /* gaps between rows: a marker */
        for (size_t j = cols; j < xs; j++) {
            x[r * xs + j].bits = 0x7fc1u;
        }
    }
    fill_normal(res, n, 3.0, 2.0);
    fill_normal(bias, cols, 0.0, 0.5);
    fill_normal(gamma, cols, 1.0, 0.2);
    fill_normal(beta, cols, 0.0, 0.5);
    for (size_t i = 0; i < ns; i++) {
        sum[i] = -777.0f;
    }
    /* The reference sum: each term widened to float, added in float, in order. */
    for (size_t r = 0; r < rows; r++) {
        for (size_t j = 0; j < cols; j++) {
            h[r * cols + j] = (from_bf16(x[r * xs + j]) + res[r * cols + j]) + bias[j];
        }
    }

    nk_status st = norm_rows(ctx, centered, rows, cols, mk_rows(x, NK_DTYPE_BF16, xs),
                             mk_rows(res, NK_DTYPE_F32, 0), bias, mk_rows(sum, NK_DTYPE_F32, ss),
                             mk_rows(y, NK_DTYPE_BF16, 0), gamma, beta, eps, m, inv, NULL);
    CHECK(st == NK_OK, "fused: status");
    for (size_t r = 0; r < rows; r++) {
        double mean, s;
        const float *hr = h + r * cols;
        ref_stats(hr, cols, eps, centered, &mean, &s);
        CHECK_NEAR(inv[r], s, 2e-6 * s, "fused: saved inverse std", r);
        if (centered) {
            CHECK_NEAR(m[r], mean, 2e-6 / s + 1e-7 * fabs(mean), "fused: saved mean", r);
        }
        for (size_t j = 0; j < cols; j++) {
            size_t i = r * cols + j;
            CHECK_AT(bits_of_f32(sum[r * ss + j]) == bits_of_f32(hr[j]), "fused: stored sum",
                     i, sum[r * ss + j], hr[j]);
            double xhat = ((double)hr[j] - mean) * s;
            double want = xhat * gamma[j] + (centered ? beta[j] : 0.0);
            double tol = 5e-6 * (fabs(gamma[j]) * (1.0 + fabs(xhat)) + fabs(beta[j])) +
                         fabs(want) * (1.0 / 256.0);
            CHECK_NEAR(from_bf16(y[i]), want, tol, "fused: y (bf16)", i);
        }
        for (size_t j = cols; r + 1 < rows && j < ss; j++) {
            CHECK_AT(sum[r * ss + j] == -777.0f, "fused: sum between rows untouched", r * ss + j,
                     sum[r * ss + j], -777.0f);
        }
    }
    /* Bitwise the unfused composition: the packed float call on the sum, rounded to bf16. */
    CHECK(norm_packed(ctx, centered, rows, cols, h, yf, gamma, beta, eps, m2, inv2) == NK_OK,
          "fused: packed call status");
    int same = memcmp(inv, inv2, rows * sizeof(float)) == 0 &&
               (!centered || memcmp(m, m2, rows * sizeof(float)) == 0);
    for (size_t i = 0; i < n; i++) {
        same = same && same_bf16(y[i], to_bf16(yf[i]));
    }
    CHECK(same, "fused: bitwise the packed float call on the sum, rounded to bf16");

    /* sum == residual (the new residual stream in place): the same sum and y, bitwise. */
    memcpy(res2, res, n * sizeof(float));
    st = norm_rows(ctx, centered, rows, cols, mk_rows(x, NK_DTYPE_BF16, xs),
                   mk_rows(res2, NK_DTYPE_F32, 0), bias, mk_rows(res2, NK_DTYPE_F32, 0),
                   mk_rows(y2, NK_DTYPE_BF16, 0), gamma, beta, eps, m2, inv2, NULL);
    CHECK(st == NK_OK, "sum == residual: status");
    same = memcmp(y, y2, n * sizeof(nk_bf16)) == 0 && memcmp(inv, inv2, rows * sizeof(float)) == 0;
    for (size_t i = 0; i < n; i++) {
        same = same && bits_of_f32(res2[i]) == bits_of_f32(h[i]);
    }
    CHECK(same, "sum == residual: bitwise the out-of-place call");

    /* No sum stored: with an f32 sum its rounding is exact, so y is the same. */
    memset(y2, 0, n * sizeof(nk_bf16));
    st = norm_rows(ctx, centered, rows, cols, mk_rows(x, NK_DTYPE_BF16, xs),
                   mk_rows(res, NK_DTYPE_F32, 0), bias, none(), mk_rows(y2, NK_DTYPE_BF16, 0),
                   gamma, beta, eps, NULL, NULL, NULL);
    CHECK(st == NK_OK && memcmp(y, y2, n * sizeof(nk_bf16)) == 0, "no sum: the same y");

    /* y == x (same address, stride and type): bitwise the out-of-place y; gaps untouched. */
    memcpy(x2, x, nx * sizeof(nk_bf16));
    st = norm_rows(ctx, centered, rows, cols, mk_rows(x2, NK_DTYPE_BF16, xs),
                   mk_rows(res, NK_DTYPE_F32, 0), bias, none(), mk_rows(x2, NK_DTYPE_BF16, xs),
                   gamma, beta, eps, NULL, NULL, NULL);
    CHECK(st == NK_OK, "y == x: status");
    same = 1;
    for (size_t r = 0; r < rows; r++) {
        for (size_t j = 0; j < xs && r * xs + j < nx; j++) {
            nk_bf16 want = j < cols ? y[r * cols + j] : x[r * xs + j];
            same = same && x2[r * xs + j].bits == want.bits;
        }
    }
    CHECK(same, "y == x: bitwise the out-of-place y, gaps untouched");

    /* sum == x (bf16): x receives the sum rounded to bf16, and that is what is normalized. */
    memcpy(x2, x, nx * sizeof(nk_bf16));
    st = norm_rows(ctx, centered, rows, cols, mk_rows(x2, NK_DTYPE_BF16, xs),
                   mk_rows(res, NK_DTYPE_F32, 0), bias, mk_rows(x2, NK_DTYPE_BF16, xs),
                   mk_rows(y2, NK_DTYPE_BF16, 0), gamma, beta, eps, NULL, inv2, NULL);
    CHECK(st == NK_OK, "sum == x: status");
    same = 1;
    for (size_t r = 0; r < rows; r++) {
        for (size_t j = 0; j < xs && r * xs + j < nx; j++) {
            nk_bf16 want = j < cols ? to_bf16(h[r * cols + j]) : x[r * xs + j];
            same = same && x2[r * xs + j].bits == want.bits;
            if (j < cols) {
                tmp[r * cols + j] = from_bf16(x2[r * xs + j]);
            }
        }
    }
    CHECK(same, "sum == x: x holds the sum rounded to bf16, gaps untouched");
    CHECK(norm_packed(ctx, centered, rows, cols, tmp, yf, gamma, beta, eps, NULL, inv) == NK_OK,
          "sum == x: packed call status");
    same = memcmp(inv, inv2, rows * sizeof(float)) == 0;
    for (size_t i = 0; i < n; i++) {
        same = same && same_bf16(y2[i], to_bf16(yf[i]));
    }
    CHECK(same, "sum == x: y bitwise the packed call on the rounded sum");

    free(x);
    free(x2);
    free(y);
    free(y2);
    free(res);
    free(res2);
    free(sum);
    free(h);
    free(bias);
    free(gamma);
    free(beta);
    free(yf);
    free(m);
    free(inv);
    free(m2);
    free(inv2);
    free(tmp);
}

/*
 * QK-norm: a packed QKV buffer of `tokens` rows of 3 * 4096 bf16 (Q, K, V); RMS norm over each
 * head of 128 of Q and K, in place, one call per head (rows = tokens, stride = 3 * 4096).
 */
static void test_qk_norm(nk_context *ctx, size_t tokens) {
    enum { HIDDEN = 4096, HEAD = 128, HEADS = HIDDEN / HEAD };
    const size_t stride = 3 * HIDDEN, n = tokens * stride;
    const float eps = 1e-6f;
    nk_bf16 *qkv = alloc_bf16(n), *orig = alloc_bf16(n), *out = alloc_bf16(tokens * HEAD);
    float *gq = alloc_f32(HEAD), *gk = alloc_f32(HEAD), *inv = alloc_f32(tokens);
    float *inv2 = alloc_f32(tokens), *row = alloc_f32(HEAD);
    for (size_t i = 0; i < n; i++) {
        qkv[i] = to_bf16((float)(0.5 + 2.0 * normal01()));
    }
    memcpy(orig, qkv, n * sizeof(nk_bf16));
    fill_normal(gq, HEAD, 1.0, 0.1);
    fill_normal(gk, HEAD, 1.0, 0.1);
    int ok = 1, same = 1;
    for (size_t head = 0; head < 2 * HEADS; head++) {
        size_t off = head * HEAD; /* Q heads, then K heads */
        const float *gamma = head < HEADS ? gq : gk;
        nk_rows rows_of_head = mk_rows(qkv + off, NK_DTYPE_BF16, stride);
        ok = ok && nk_rmsnorm_forward_rows(ctx, tokens, HEAD, rows_of_head, none(), NULL, none(),
                                           rows_of_head, gamma, eps, inv, NULL) == NK_OK;
        /* Out of place from the original, into packed rows: bitwise the same. */
        ok = ok && nk_rmsnorm_forward_rows(ctx, tokens, HEAD,
                                           mk_rows(orig + off, NK_DTYPE_BF16, stride), none(),
                                           NULL, none(), mk_rows(out, NK_DTYPE_BF16, 0), gamma,
                                           eps, inv2, NULL) == NK_OK;
        same = same && memcmp(inv, inv2, tokens * sizeof(float)) == 0;
        for (size_t t = 0; t < tokens; t++) {
            double mean, s;
            for (size_t j = 0; j < HEAD; j++) {
                row[j] = from_bf16(orig[t * stride + off + j]);
            }
            ref_stats(row, HEAD, eps, 0, &mean, &s);
            CHECK_NEAR(inv[t], s, 2e-6 * s, "qk-norm: saved inverse rms", t);
            for (size_t j = 0; j < HEAD; j++) {
                size_t i = t * stride + off + j;
                double want = (double)row[j] * s * gamma[j];
                CHECK_NEAR(from_bf16(qkv[i]), want, 1e-5 * (1.0 + fabs(want)) + fabs(want) / 256.0,
                           "qk-norm: y (bf16)", i);
                same = same && qkv[i].bits == out[t * HEAD + j].bits;
            }
        }
    }
    CHECK(ok, "qk-norm: status of every call");
    CHECK(same, "qk-norm: in place bitwise the out-of-place call");
    for (size_t t = 0; t < tokens; t++) {
        CHECK(memcmp(qkv + t * stride + 2 * HIDDEN, orig + t * stride + 2 * HIDDEN,
                     HIDDEN * sizeof(nk_bf16)) == 0,
              "qk-norm: V untouched");
    }
    free(qkv);
    free(orig);
    free(out);
    free(gq);
    free(gk);
    free(inv);
    free(inv2);
    free(row);
}

/* The contract's quantization of one row of float outputs `v` (q: `cols` int8, one scale). */
static float quantize_row(const float *v, size_t cols, int8_t *q) {
    float amax = 0.0f;
    int finite = 1;
    for (size_t j = 0; j < cols; j++) {
        finite = finite && isfinite(v[j]);
        amax = fabsf(v[j]) > amax ? fabsf(v[j]) : amax;
    }
    if (!finite || amax == 0.0f) {
        memset(q, 0, cols);
        return finite ? 0.0f : NAN;
    }
    float k = 127.0f / amax;
    for (size_t j = 0; j < cols; j++) {
        float p = isinf(k) ? (v[j] * 4294967296.0f) * (127.0f / (amax * 4294967296.0f)) : v[j] * k;
        float r = nearbyintf(p);
        q[j] = (int8_t)(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
    }
    return amax / 127.0f;
}

/*
 * int8 output: x f32 (rows of stride cols + 2), y int8 in rows of stride cols + 16, per-row
 * y_scale. Row 2 is all zero, row 4 holds a NaN.
 */
static void test_int8(nk_context *ctx, size_t rows, size_t cols, int centered) {
    const float eps = 1e-5f;
    const size_t xs = cols + 2, ys = cols + 16;
    const size_t nx = (rows - 1) * xs + cols, ny = (rows - 1) * ys + cols, n = rows * cols;
    float *x = alloc_f32(nx), *gamma = alloc_f32(cols), *scale = alloc_f32(rows);
    float *v = alloc_f32(n), *row = alloc_f32(cols), *want_scale = alloc_f32(rows);
    int8_t *y = (int8_t *)alloc_bytes(ny), *want = (int8_t *)alloc_bytes(n);
    fill_normal(x, nx, 1.0, 3.0);
    fill_normal(gamma, cols, 1.0, 0.3);
    memset(x + 2 * xs, 0, cols * sizeof(float));
    x[4 * xs + cols / 2] = NAN;
    memset(y, 0x5a, ny);
    for (size_t r = 0; r < rows; r++) {
        scale[r] = -1.0f;
    }
    /* beta NULL: the zero row gives zeros. */
    nk_status st = norm_rows(ctx, centered, rows, cols, mk_rows(x, NK_DTYPE_F32, xs), none(),
                             NULL, none(), mk_rows(y, NK_DTYPE_I8, ys), gamma, NULL, eps, NULL,
                             NULL, scale);
    CHECK(st == NK_OK, "int8: status");
    /* The float output of the same call, then the contract's formula: bitwise. */
    st = norm_rows(ctx, centered, rows, cols, mk_rows(x, NK_DTYPE_F32, xs), none(), NULL, none(),
                   mk_rows(v, NK_DTYPE_F32, 0), gamma, NULL, eps, NULL, NULL, NULL);
    CHECK(st == NK_OK, "int8: float call status");
    for (size_t r = 0; r < rows; r++) {
        want_scale[r] = quantize_row(v + r * cols, cols, want + r * cols);
        CHECK_AT(same_f32(scale[r], want_scale[r]), "int8: y_scale bitwise the formula's", r,
                 scale[r], want_scale[r]);
        int same = memcmp(y + r * ys, want + r * cols, cols) == 0;
        CHECK_AT(same, "int8: row bitwise the formula's", r, 0, 0);
        for (size_t j = cols; r + 1 < rows && j < ys; j++) {
            CHECK_AT(y[r * ys + j] == 0x5a, "int8: between rows untouched", r * ys + j,
                     y[r * ys + j], 0x5a);
        }
    }
    CHECK(scale[2] == 0.0f, "int8: all-zero row has scale 0");
    CHECK(isnan(scale[4]), "int8: NaN row has scale NaN");
    for (size_t j = 0; j < cols; j++) {
        CHECK_AT(y[2 * ys + j] == 0 && y[4 * ys + j] == 0, "int8: zero and NaN rows are zeros", j,
                 y[2 * ys + j], y[4 * ys + j]);
    }
    /* Against the scalar reference in double: the scale, and each value within rounding. */
    for (size_t r = 0; r < rows; r++) {
        if (r == 2 || r == 4) {
            continue;
        }
        double mean, s, amax = 0.0;
        memcpy(row, x + r * xs, cols * sizeof(float));
        ref_stats(row, cols, eps, centered, &mean, &s);
        for (size_t j = 0; j < cols; j++) {
            double w = ((double)row[j] - mean) * s * gamma[j];
            amax = fabs(w) > amax ? fabs(w) : amax;
        }
        CHECK_NEAR(scale[r], amax / 127.0, 1e-5 * amax / 127.0, "int8: y_scale", r);
        int top = 0;
        for (size_t j = 0; j < cols; j++) {
            double w = ((double)row[j] - mean) * s * gamma[j] / (amax / 127.0);
            CHECK_NEAR(y[r * ys + j], w, 0.5 + 1e-2, "int8: y", r * cols + j);
            top = top || y[r * ys + j] == 127 || y[r * ys + j] == -127;
        }
        CHECK_AT(top, "int8: the largest |v| of a row is 127", r, 0, 127);
    }
    free(x);
    free(gamma);
    free(scale);
    free(v);
    free(row);
    free(want_scale);
    free(y);
    free(want);
}

/* Errors: the status, and no byte of any buffer changed. */
static void test_errors(nk_context *ctx) {
    enum { ROWS = 3, COLS = 8, N = ROWS * COLS };
    float pool[8 * N];
    float saved[8 * N];
    for (size_t i = 0; i < 8 * N; i++) {
        pool[i] = (float)i * 0.125f - 3.0f;
    }
    memcpy(saved, pool, sizeof pool);
    float *x = pool, *res = pool + N, *sum = pool + 2 * N, *y = pool + 3 * N;
    float *yq = pool + 4 * N; /* int8 y: N bytes */
    float *gamma = pool + 5 * N, *beta = gamma + COLS, *bias = beta + COLS;
    float *m = pool + 6 * N, *inv = m + ROWS, *scale = inv + ROWS;
    const float eps = 1e-5f;
    nk_rows X = mk_rows(x, NK_DTYPE_F32, 0), R = mk_rows(res, NK_DTYPE_F32, 0);
    nk_rows S = mk_rows(sum, NK_DTYPE_F32, 0), Y = mk_rows(y, NK_DTYPE_F32, 0);
    nk_rows YQ = mk_rows(yq, NK_DTYPE_I8, 0);
    for (int centered = 0; centered < 2; centered++) {
        /* Strides below cols. */
        CHECK(norm_rows(ctx, centered, ROWS, COLS, mk_rows(x, NK_DTYPE_F32, COLS - 1), R, bias,
                        S, Y, gamma, beta, eps, m, inv, NULL) == NK_ERR_BAD_SHAPE,
              "x stride < cols: BAD_SHAPE");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, S, mk_rows(y, NK_DTYPE_F32, 1),
                        gamma, beta, eps, m, inv, NULL) == NK_ERR_BAD_SHAPE,
              "y stride < cols: BAD_SHAPE");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, mk_rows(sum, NK_DTYPE_F32, 7), Y,
                        gamma, beta, eps, m, inv, NULL) == NK_ERR_BAD_SHAPE,
              "sum stride < cols: BAD_SHAPE");
        /* I8 where only y may be I8. */
        CHECK(norm_rows(ctx, centered, ROWS, COLS, mk_rows(x, NK_DTYPE_I8, 0), R, bias, S, Y,
                        gamma, beta, eps, m, inv, NULL) == NK_ERR_BAD_ARGUMENT,
              "I8 x: BAD_ARGUMENT");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, mk_rows(res, NK_DTYPE_I8, 0), bias, S, Y,
                        gamma, beta, eps, m, inv, NULL) == NK_ERR_BAD_ARGUMENT,
              "I8 residual: BAD_ARGUMENT");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, mk_rows(sum, NK_DTYPE_I8, 0), Y,
                        gamma, beta, eps, m, inv, NULL) == NK_ERR_BAD_ARGUMENT,
              "I8 sum: BAD_ARGUMENT");
        /* y_scale: required exactly with an I8 y. */
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, S, YQ, gamma, beta, eps, m, inv,
                        NULL) == NK_ERR_NULL_POINTER,
              "I8 y without y_scale: NULL_POINTER");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, S, Y, gamma, beta, eps, m, inv,
                        scale) == NK_ERR_BAD_ARGUMENT,
              "y_scale with an f32 y: BAD_ARGUMENT");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, S, Y, gamma, beta, -1.0f, m, inv,
                        NULL) == NK_ERR_BAD_ARGUMENT,
              "eps < 0: BAD_ARGUMENT");
        /* Partial overlaps. */
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, S, mk_rows(x + 1, NK_DTYPE_F32, 0),
                        gamma, beta, eps, m, inv, NULL) == NK_ERR_ALIAS,
              "y one element past x: ALIAS");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, mk_rows(res + 2, NK_DTYPE_F32, 0),
                        Y, gamma, beta, eps, m, inv, NULL) == NK_ERR_ALIAS,
              "sum partly over residual: ALIAS");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, S, mk_rows(sum + 5, NK_DTYPE_F32, 0),
                        gamma, beta, eps, m, inv, NULL) == NK_ERR_ALIAS,
              "y partly over sum: ALIAS");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, mk_rows(x, NK_DTYPE_F32, 10), R, bias, S,
                        mk_rows(x, NK_DTYPE_F32, 9), gamma, beta, eps, m, inv, NULL) ==
                  NK_ERR_ALIAS,
              "y at x with another stride: ALIAS");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, S, mk_rows(x, NK_DTYPE_BF16, 0),
                        gamma, beta, eps, m, inv, NULL) == NK_ERR_ALIAS,
              "y at x with another type: ALIAS");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, mk_rows(x, NK_DTYPE_F32, 2 * COLS), R, bias, S,
                        mk_rows(x + COLS, NK_DTYPE_F32, 2 * COLS), gamma, beta, eps, m, inv,
                        NULL) == NK_ERR_ALIAS,
              "y interleaved with x (extents overlap): ALIAS");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, S, YQ, gamma, beta, eps, m, inv,
                        (float *)yq + 1) == NK_ERR_ALIAS,
              "y_scale inside the int8 y: ALIAS");
        CHECK(norm_rows(ctx, centered, ROWS, COLS, X, R, bias, X, X, gamma, beta, eps, m, inv,
                        NULL) == NK_ERR_ALIAS,
              "sum and y both over x: ALIAS");
        CHECK(memcmp(pool, saved, sizeof pool) == 0, "nothing written on error");
    }
    /* An empty call: NULL data, OK, nothing written. */
    CHECK(nk_rmsnorm_forward_rows(ctx, 0, COLS, none(), none(), NULL, none(),
                                  mk_rows(NULL, NK_DTYPE_I8, 0), NULL, eps, NULL, NULL) == NK_OK,
          "no rows: OK");
}

int main(void) {
    nk_context *ctx = NULL;
    if (nk_context_create(2, &ctx) != NK_OK || ctx == NULL) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    static const nk_isa all[] = {NK_ISA_PORTABLE, NK_ISA_AVX2, NK_ISA_AVX512, NK_ISA_NEON};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (nk_context_set_isa(ctx, all[i]) != NK_OK) {
            continue; /* not on this CPU */
        }
        for (int centered = 0; centered < 2; centered++) {
            test_fused(ctx, 5, 384, centered);
            test_fused(ctx, 1, 37, centered);
            test_fused(ctx, 40, 1024, centered);
            test_int8(ctx, 6, 256, centered);
            test_int8(ctx, 5, 33, centered);
        }
        test_qk_norm(ctx, 6);
        test_errors(ctx);
    }
    test_fused(NULL, 3, 4096, 0);
    test_int8(NULL, 70, 4096, 1);
    test_qk_norm(NULL, 3);
    test_errors(NULL);
    nk_context_destroy(ctx);
    printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures > 0 ? 1 : 0;
}
