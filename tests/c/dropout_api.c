/*
 * The dropout family of the C API, checked from C (and, compiled as C++, from C++) against the
 * committed header and the library.
 *
 * This file carries its own Philox4x32-10 (checked against Random123's published known answers)
 * and the contract's word stream, and compares every dropout function of include/normkit.h with
 * a naive loop: masks and inverted/channel dropout bit for bit, alpha, Gaussian and uniform
 * dropout within float rounding of a double computation. It also checks in place against out of
 * place, a tensor cut into pieces against one call, every ISA of the CPU and 1 or 3 threads
 * against each other, and the error statuses (with every buffer unchanged after an error).
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

#if defined(__GNUC__)
#define DK_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define DK_PRINTF(f, a)
#endif

/* ------------------------------------------------------------------------------------------ */
/* Reporting                                                                                    */

static int g_checks = 0;
static int g_failures = 0;
static char g_case[200] = "";

static void set_case(const char *fmt, ...) DK_PRINTF(1, 2);
static void set_case(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(g_case, sizeof g_case, fmt, args);
    va_end(args);
}

static void check_at(int ok, int line, const char *fmt, ...) DK_PRINTF(3, 4);
static void check_at(int ok, int line, const char *fmt, ...) {
    g_checks++;
    if (ok) {
        return;
    }
    g_failures++;
    if (g_failures <= 100) {
        va_list args;
        va_start(args, fmt);
        fprintf(stderr, "FAIL (line %d) [%s]: ", line, g_case);
        vfprintf(stderr, fmt, args);
        fputc('\n', stderr);
        va_end(args);
    }
}

#define CHECK(cond, ...) check_at((cond) ? 1 : 0, __LINE__, __VA_ARGS__)

static void expect_status_at(nk_status got, nk_status want, int line, const char *what) {
    check_at(got == want, line, "%s: got status %d, want %d (%s; last error: \"%s\")", what,
             (int)got, (int)want, nk_status_string(got), nk_last_error_message());
    if (got != NK_OK && got == want) {
        check_at(nk_last_error_message()[0] != '\0', line, "%s: empty error message", what);
    }
}

#define EXPECT_STATUS(got, want, what) expect_status_at((got), (want), __LINE__, (what))
#define EXPECT_OK(got, what) expect_status_at((got), NK_OK, __LINE__, (what))

/* ------------------------------------------------------------------------------------------ */
/* Memory and data                                                                              */

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 16);
    if (p == NULL) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

static float *alloc_f32(size_t n) { return (float *)xmalloc(n * sizeof(float)); }
static uint8_t *alloc_u8(size_t n) { return (uint8_t *)xmalloc(n); }

static size_t mask_bytes(size_t n) { return (n + 7) / 8; }

/* A NaN with a payload no call writes: the content of every output before a call. */
static void poison(float *p, size_t n) { memset(p, 0x7f, n * sizeof(float)); }

static uint32_t bits_of(float v) {
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

/* The same float: the same bits, or both NaN. */
static int same_float(float a, float b) {
    return bits_of(a) == bits_of(b) || (isnan(a) && isnan(b));
}

/* Index of the first element where a and b are not the same float, or n. */
static size_t first_difference(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!same_float(a[i], b[i])) {
            return i;
        }
    }
    return n;
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint64_t next_u64(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545F4914F6CDD1Dull;
}

static double uniform01(void) { return (double)(next_u64() >> 11) / 9007199254740992.0; }

static double normal01(void) {
    double u1 = 1.0 - uniform01();
    double u2 = uniform01();
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Normal data; with `specials`, one value in 8 is NaN, an infinity or a signed zero. */
static void fill(float *x, size_t n, int specials) {
    for (size_t i = 0; i < n; i++) {
        if (specials && next_u64() % 8 == 0) {
            static const float values[4] = {NAN, INFINITY, -INFINITY, -0.0f};
            x[i] = values[next_u64() % 4];
        } else {
            x[i] = (float)normal01();
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Philox4x32-10 and the word stream, written from the paper                                    */

static void philox10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t x0 = counter[0], x1 = counter[1], x2 = counter[2], x3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * x0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * x2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ x1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ x3 ^ k1;
        x1 = (uint32_t)p1;
        x3 = (uint32_t)p0;
        x0 = n0;
        x2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = x0;
    out[1] = x1;
    out[2] = x2;
    out[3] = x3;
}

/* Word w of the stream of seed. */
static uint32_t word_at(uint64_t seed, uint64_t w) {
    uint64_t block = w >> 2;
    uint32_t counter[4] = {(uint32_t)block, (uint32_t)(block >> 32), 0, 0};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t out[4];
    philox10(counter, key, out);
    return out[w & 3];
}

/* Element kept iff (r >> 8) >= ceil(p * 2^24). */
static int keeps(uint32_t r, float p) {
    return (double)(r >> 8) >= ceil((double)p * 16777216.0);
}

static double uniform_of(uint32_t r) { return (double)(r >> 8) / 16777216.0; }

static int bit(const uint8_t *mask, size_t i) { return (mask[i >> 3] >> (i & 7)) & 1; }

/* The packed mask of n elements from word `first` on: LSB first, zero padding bits. */
static void ref_mask(size_t n, float p, uint64_t seed, uint64_t first, uint8_t *mask) {
    memset(mask, 0, mask_bytes(n));
    for (size_t i = 0; i < n; i++) {
        if (keeps(word_at(seed, first + i), p)) {
            mask[i >> 3] = (uint8_t)(mask[i >> 3] | (1u << (i & 7)));
        }
    }
}

static float scale_of(float p) { return (float)(1.0 / (1.0 - (double)p)); }

static const double k_alpha_prime = -1.7580993408473766;

static void alpha_ab(float p, float *a, float *b) {
    double pd = p;
    double ad = 1.0 / sqrt((1.0 - pd) * (1.0 + pd * k_alpha_prime * k_alpha_prime));
    *a = (float)ad;
    *b = (float)(-ad * k_alpha_prime * pd);
}

/* ------------------------------------------------------------------------------------------ */
/* The generator                                                                                */

static void test_philox(void) {
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
        {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu,
         0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu},
        {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u,
         0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u},
    };
    set_case("nk_philox4x32_10");
    for (int t = 0; t < 3; t++) {
        uint32_t mine[4], theirs[4];
        philox10(kat[t], kat[t] + 4, mine);
        nk_philox4x32_10(kat[t], kat[t] + 4, theirs);
        for (int i = 0; i < 4; i++) {
            CHECK(mine[i] == kat[t][6 + i], "own Philox, vector %d word %d: %08x", t, i,
                  (unsigned)mine[i]);
            CHECK(theirs[i] == kat[t][6 + i], "known answer %d word %d: got %08x, want %08x", t,
                  i, (unsigned)theirs[i], (unsigned)kat[t][6 + i]);
        }
    }
    for (int t = 0; t < 2000; t++) {
        uint32_t c[4], k[2], mine[4], theirs[4];
        for (int i = 0; i < 4; i++) {
            c[i] = (uint32_t)next_u64();
        }
        k[0] = (uint32_t)next_u64();
        k[1] = (uint32_t)next_u64();
        philox10(c, k, mine);
        nk_philox4x32_10(c, k, theirs);
        CHECK(memcmp(mine, theirs, sizeof mine) == 0, "random block %d", t);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Elementwise operations against naive loops                                                   */

enum dk_op { OP_DROPOUT, OP_ALPHA, OP_GAUSSIAN, OP_UNIFORM };
static const char *const k_op_names[4] = {"dropout", "alpha dropout", "Gaussian dropout",
                                          "uniform dropout"};

/* One call of an elementwise operation: forward (src = x, dst = y, mask out) or backward
 * (src = dy, dst = dx, mask in). */
static nk_status call_op(int op, int backward, nk_context *ctx, size_t n, const float *src,
                         float *dst, float param, uint64_t seed, uint64_t offset, uint8_t *mask) {
    switch (op) {
    case OP_DROPOUT:
        return backward ? nk_dropout_backward(ctx, n, src, dst, param, seed, offset, mask)
                        : nk_dropout_forward(ctx, n, src, dst, param, seed, offset, mask);
    case OP_ALPHA:
        return backward ? nk_alpha_dropout_backward(ctx, n, src, dst, param, seed, offset, mask)
                        : nk_alpha_dropout_forward(ctx, n, src, dst, param, seed, offset, mask);
    case OP_GAUSSIAN:
        return backward ? nk_gaussian_dropout_backward(ctx, n, src, dst, param, seed, offset)
                        : nk_gaussian_dropout_forward(ctx, n, src, dst, param, seed, offset);
    default:
        return backward ? nk_uniform_dropout_backward(ctx, n, src, dst, param, seed, offset)
                        : nk_uniform_dropout_forward(ctx, n, src, dst, param, seed, offset);
    }
}

static int has_mask(int op) { return op == OP_DROPOUT || op == OP_ALPHA; }

/* The forward of `op` on x[i], element i reading the words of index offset + i (two words for
 * Gaussian dropout), in double, and the bound on the library's float error. */
static double ref_forward(int op, float x, float param, uint64_t seed, uint64_t offset, size_t i,
                          double *tol) {
    const double eps = 1.0 / 8388608.0; /* 2^-23 */
    uint64_t w = offset + i;
    if (op == OP_DROPOUT || op == OP_ALPHA) {
        int kept = keeps(word_at(seed, w), param);
        if (op == OP_DROPOUT) {
            *tol = 0.0;
            return kept ? (double)(float)((double)x * scale_of(param)) : 0.0;
        }
        if (param == 1.0f) {
            *tol = 0.0;
            return 0.0;
        }
        float a, b;
        alpha_ab(param, &a, &b);
        double v = kept ? (double)x : k_alpha_prime;
        *tol = 2.0 * eps * (fabs((double)a * v) + fabs((double)b)) + 1e-37;
        return (double)a * v + (double)b;
    }
    if (op == OP_GAUSSIAN) {
        uint32_t r0 = word_at(seed, 2 * w), r1 = word_at(seed, 2 * w + 1);
        double u1 = ((double)(r0 >> 8) + 1.0) / 16777216.0;
        double u2 = uniform_of(r1);
        double sigma = sqrt((double)param / (1.0 - (double)param));
        double radius = sqrt(-2.0 * log(u1));
        double e = 1.0 + sigma * radius * cos(6.283185307179586 * u2);
        *tol = fabs((double)x) * (4e-6 * (1.0 + sigma * radius) + 2.0 * eps * fabs(e));
        return (double)x * e;
    }
    double f = 1.0 + (double)param * (2.0 * uniform_of(word_at(seed, w)) - 1.0);
    *tol = 8.0 * eps * fabs((double)x) * (1.0 + 2.0 * (double)param);
    return (double)x * f;
}

/* The backward of `op` on dy[i] given the decision `kept` (masked operations). Exact. */
static float ref_backward_masked(int op, float dy, float p, int kept) {
    if (!kept) {
        return 0.0f;
    }
    if (op == OP_DROPOUT) {
        return (float)((double)dy * scale_of(p));
    }
    if (p == 1.0f) {
        return 0.0f;
    }
    float a, b;
    alpha_ab(p, &a, &b);
    return (float)((double)dy * a);
}

/* One (op, n, param, seed, offset) case on one context: forward with and without mask against
 * the loop, in place, backward with the mask and made again, and for the noise operations
 * backward against the forward applied to dy. */
static void test_op(nk_context *ctx, const char *ctx_name, int op, size_t n, float param,
                    uint64_t seed, uint64_t offset) {
    set_case("%s, n %zu, param %g, seed %llx, offset %llu, %s", k_op_names[op], n, (double)param,
             (unsigned long long)seed, (unsigned long long)offset, ctx_name);
    float *x = alloc_f32(n), *dy = alloc_f32(n), *y = alloc_f32(n), *y2 = alloc_f32(n);
    float *dx = alloc_f32(n), *dx2 = alloc_f32(n), *fwd_dy = alloc_f32(n);
    size_t mb = mask_bytes(n);
    uint8_t *mask = alloc_u8(mb + 1), *want_mask = alloc_u8(mb + 1);
    int exact_data = op == OP_DROPOUT;
    fill(x, n, exact_data);
    fill(dy, n, exact_data);
    poison(y, n);
    memset(mask, 0xA5, mb + 1);
    uint8_t *m = has_mask(op) ? mask : NULL;

    EXPECT_OK(call_op(op, 0, ctx, n, x, y, param, seed, offset, m), "forward");
    size_t bad = 0, first_bad = 0;
    double worst_got = 0.0, worst_want = 0.0;
    for (size_t i = 0; i < n; i++) {
        double tol;
        double want = ref_forward(op, x[i], param, seed, offset, i, &tol);
        int ok;
        if (tol == 0.0) {
            ok = same_float(y[i], (float)want);
        } else {
            ok = isnan(want) ? isnan(y[i]) : fabs((double)y[i] - want) <= tol;
        }
        if (!ok && bad++ == 0) {
            first_bad = i;
            worst_got = y[i];
            worst_want = want;
        }
    }
    CHECK(bad == 0, "forward: %zu of %zu elements off, first [%zu]: got %.9g, want %.9g", bad, n,
          first_bad, worst_got, worst_want);
    if (has_mask(op)) {
        ref_mask(n, param, seed, offset, want_mask);
        CHECK(memcmp(mask, want_mask, mb) == 0, "forward: mask differs from the loop's");
        CHECK(mask[mb] == 0xA5, "forward: wrote past the mask");
    }

    /* Without the mask; in place. */
    poison(y2, n);
    EXPECT_OK(call_op(op, 0, ctx, n, x, y2, param, seed, offset, NULL), "forward without mask");
    CHECK(first_difference(y, y2, n) == n, "forward without mask differs");
    memcpy(y2, x, n * sizeof(float));
    EXPECT_OK(call_op(op, 0, ctx, n, y2, y2, param, seed, offset, NULL), "forward in place");
    CHECK(first_difference(y, y2, n) == n, "forward in place differs from out of place");

    /* Backward, decisions made again. */
    poison(dx, n);
    EXPECT_OK(call_op(op, 1, ctx, n, dy, dx, param, seed, offset, NULL), "backward");
    if (has_mask(op)) {
        size_t i = 0;
        for (; i < n; i++) {
            float want = ref_backward_masked(op, dy[i], param, bit(want_mask, i));
            if (!same_float(dx[i], want)) {
                break;
            }
        }
        CHECK(i == n, "backward (made again): element %zu differs", i);
        /* With the mask; in place. */
        poison(dx2, n);
        EXPECT_OK(call_op(op, 1, ctx, n, dy, dx2, param, seed, offset, mask), "backward, mask");
        CHECK(first_difference(dx, dx2, n) == n, "backward with the mask differs");
    } else {
        poison(fwd_dy, n);
        EXPECT_OK(call_op(op, 0, ctx, n, dy, fwd_dy, param, seed, offset, NULL), "forward of dy");
        CHECK(first_difference(dx, fwd_dy, n) == n,
              "backward differs from the forward's factors applied to dy");
    }
    memcpy(dx2, dy, n * sizeof(float));
    EXPECT_OK(call_op(op, 1, ctx, n, dx2, dx2, param, seed, offset, NULL), "backward in place");
    CHECK(first_difference(dx, dx2, n) == n, "backward in place differs from out of place");

    /* nk_dropout_mask gives the same mask. */
    if (op == OP_DROPOUT) {
        memset(mask, 0xA5, mb + 1);
        EXPECT_OK(nk_dropout_mask(ctx, n, param, seed, offset, mask), "nk_dropout_mask");
        CHECK(memcmp(mask, want_mask, mb) == 0, "nk_dropout_mask differs from the loop's");
        CHECK(mask[mb] == 0xA5, "nk_dropout_mask wrote past the mask");
    }
    free(x);
    free(dy);
    free(y);
    free(y2);
    free(dx);
    free(dx2);
    free(fwd_dy);
    free(mask);
    free(want_mask);
}

/* A tensor cut into three pieces gives what one call gives (outputs and mask bits). */
static void test_split(nk_context *ctx, const char *ctx_name, int op, float param) {
    const size_t n = 5000, cut1 = 1237, cut2 = 1241;
    const uint64_t seed = 0xC0FFEEull, offset = 999;
    set_case("%s split at %zu and %zu, %s", k_op_names[op], cut1, cut2, ctx_name);
    float *x = alloc_f32(n), *y = alloc_f32(n), *yp = alloc_f32(n);
    uint8_t *mask = alloc_u8(mask_bytes(n)), *piece = alloc_u8(mask_bytes(n));
    fill(x, n, 0);
    uint8_t *m = has_mask(op) ? mask : NULL;
    EXPECT_OK(call_op(op, 0, ctx, n, x, y, param, seed, offset, m), "whole");
    size_t starts[4] = {0, cut1, cut2, n};
    int bits_ok = 1;
    for (int k = 0; k < 3; k++) {
        size_t s = starts[k], len = starts[k + 1] - s;
        uint8_t *pm = has_mask(op) ? piece : NULL;
        EXPECT_OK(call_op(op, 0, ctx, len, x + s, yp + s, param, seed, offset + s, pm), "piece");
        for (size_t i = 0; pm != NULL && i < len; i++) {
            bits_ok &= bit(piece, i) == bit(mask, s + i);
        }
    }
    CHECK(first_difference(y, yp, n) == n, "pieces differ from one call");
    CHECK(bits_ok, "mask bits of the pieces differ from one call");
    free(x);
    free(y);
    free(yp);
    free(mask);
    free(piece);
}

/* ------------------------------------------------------------------------------------------ */
/* Channel dropout                                                                              */

static nk_shape make_shape(size_t batch, size_t channels, size_t spatial, nk_layout layout) {
    nk_shape s;
    s.batch = batch;
    s.channels = channels;
    s.spatial = spatial;
    s.layout = layout;
    return s;
}

static size_t at(nk_shape sh, size_t n, size_t c, size_t s) {
    if (sh.layout == NK_LAYOUT_NCS) {
        return (n * sh.channels + c) * sh.spatial + s;
    }
    return (n * sh.spatial + s) * sh.channels + c;
}

static void test_channel(nk_context *ctx, const char *ctx_name, nk_shape sh, float p,
                         uint64_t seed, uint64_t offset) {
    set_case("channel dropout %zux%zux%zu %s, p %g, offset %llu, %s", sh.batch, sh.channels,
             sh.spatial, sh.layout == NK_LAYOUT_NCS ? "NCS" : "NSC", (double)p,
             (unsigned long long)offset, ctx_name);
    size_t n = sh.batch * sh.channels * sh.spatial, pairs = sh.batch * sh.channels;
    float *x = alloc_f32(n), *y = alloc_f32(n), *want = alloc_f32(n), *dx = alloc_f32(n);
    uint8_t *mask = alloc_u8(mask_bytes(pairs) + 1), *want_mask = alloc_u8(mask_bytes(pairs));
    fill(x, n, 1);
    ref_mask(pairs, p, seed, offset, want_mask);
    float scale = scale_of(p);
    for (size_t b = 0; b < sh.batch; b++) {
        for (size_t c = 0; c < sh.channels; c++) {
            int kept = bit(want_mask, b * sh.channels + c);
            for (size_t s = 0; s < sh.spatial; s++) {
                size_t i = at(sh, b, c, s);
                want[i] = kept ? (float)((double)x[i] * scale) : 0.0f;
            }
        }
    }
    poison(y, n);
    memset(mask, 0xA5, mask_bytes(pairs) + 1);
    EXPECT_OK(nk_channel_dropout_forward(ctx, sh, x, y, p, seed, offset, mask), "forward");
    size_t d = first_difference(y, want, n);
    CHECK(d == n, "forward: element %zu is %.9g, want %.9g", d, d < n ? (double)y[d] : 0.0,
          d < n ? (double)want[d] : 0.0);
    if (n > 0) {
        CHECK(memcmp(mask, want_mask, mask_bytes(pairs)) == 0, "forward: mask");
    } else {
        /* No data: nothing is written, the mask included. */
        int untouched = 1;
        for (size_t i = 0; i < mask_bytes(pairs); i++) {
            untouched &= mask[i] == 0xA5;
        }
        CHECK(untouched, "forward without data wrote the mask");
    }
    CHECK(mask[mask_bytes(pairs)] == 0xA5, "forward: wrote past the mask");
    /* Backward (x as dy: the same factors), made again and with the mask, in place. */
    poison(dx, n);
    EXPECT_OK(nk_channel_dropout_backward(ctx, sh, x, dx, p, seed, offset, NULL), "backward");
    CHECK(first_difference(dx, want, n) == n, "backward (made again)");
    memcpy(dx, x, n * sizeof(float));
    EXPECT_OK(nk_channel_dropout_backward(ctx, sh, dx, dx, p, seed, offset, mask),
              "backward in place with the mask");
    CHECK(first_difference(dx, want, n) == n, "backward in place with the mask");
    free(x);
    free(y);
    free(want);
    free(dx);
    free(mask);
    free(want_mask);
}

/* ------------------------------------------------------------------------------------------ */
/* ISAs and thread counts                                                                       */

/* Results of every operation on `a` and `b` are the same bits (Gaussian dropout: within float
 * rounding across ISAs, checked by test_op; the same bits across thread counts, `same_isa`). */
static void test_same_bits(nk_context *a, nk_context *b, const char *what, int same_isa) {
    const size_t n = 200003;
    const uint64_t seed = 77, offset = 123457;
    set_case("%s", what);
    float *x = alloc_f32(n), *ya = alloc_f32(n), *yb = alloc_f32(n);
    uint8_t *ma = alloc_u8(mask_bytes(n)), *mb = alloc_u8(mask_bytes(n));
    fill(x, n, 1);
    for (int op = 0; op < 4; op++) {
        if (op == OP_GAUSSIAN && !same_isa) {
            continue;
        }
        float param = op == OP_UNIFORM ? 0.5f : 0.3f;
        for (int backward = 0; backward < 2; backward++) {
            uint8_t *pa = has_mask(op) && !backward ? ma : NULL;
            uint8_t *pb = has_mask(op) && !backward ? mb : NULL;
            EXPECT_OK(call_op(op, backward, a, n, x, ya, param, seed, offset, pa), "first");
            EXPECT_OK(call_op(op, backward, b, n, x, yb, param, seed, offset, pb), "second");
            CHECK(first_difference(ya, yb, n) == n, "%s %s: outputs differ", k_op_names[op],
                  backward ? "backward" : "forward");
            CHECK(pa == NULL || memcmp(ma, mb, mask_bytes(n)) == 0, "%s: masks differ",
                  k_op_names[op]);
        }
    }
    nk_shape sh = make_shape(16, 25, 500, NK_LAYOUT_NSC);
    EXPECT_OK(nk_channel_dropout_forward(a, sh, x, ya, 0.4f, seed, offset, ma), "channel");
    EXPECT_OK(nk_channel_dropout_forward(b, sh, x, yb, 0.4f, seed, offset, mb), "channel");
    CHECK(first_difference(ya, yb, 16 * 25 * 500) == 16 * 25 * 500, "channel dropout differs");
    CHECK(memcmp(ma, mb, mask_bytes(16 * 25)) == 0, "channel dropout masks differ");
    free(x);
    free(ya);
    free(yb);
    free(ma);
    free(mb);
}

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                       */

enum { ERR_N = 37, ERR_BYTES = 1024 };

/* Calls `op` with pointers into one arena filled with a pattern; checks the status, and that
 * no byte of the arena changed if the call failed. The fixture is x at byte 64, y at 256, the
 * mask at 448; `dx_at`, `dy_at`, `m_at` move them (in bytes; -1 = NULL). */
static void expect_op(nk_context *ctx, int op, int backward, size_t n, long src_at, long dst_at,
                      long m_at, float param, uint64_t offset, nk_status want, const char *what) {
    static uint64_t arena64[ERR_BYTES / 8];
    static uint8_t before[ERR_BYTES];
    uint8_t *arena = (uint8_t *)arena64;
    for (int i = 0; i < ERR_BYTES; i++) {
        arena[i] = (uint8_t)(i * 29 + 7);
    }
    for (int i = 0; i < ERR_N; i++) {
        float v = (float)i - 10.5f;
        memcpy(arena + 64 + 4 * i, &v, sizeof v);
    }
    memcpy(before, arena, ERR_BYTES);
    const float *src = src_at < 0 ? NULL : (const float *)(const void *)(arena + src_at);
    float *dst = dst_at < 0 ? NULL : (float *)(void *)(arena + dst_at);
    uint8_t *m = m_at < 0 || !has_mask(op) ? NULL : arena + m_at;
    nk_status s = call_op(op, backward, ctx, n, src, dst, param, 5, offset, m);
    char label[200];
    snprintf(label, sizeof label, "%s %s: %s", k_op_names[op], backward ? "backward" : "forward",
             what);
    EXPECT_STATUS(s, want, label);
    if (want != NK_OK) {
        CHECK(memcmp(before, arena, ERR_BYTES) == 0, "%s: wrote on error", label);
    }
}

static void test_errors(nk_context *ctx, const char *ctx_name) {
    set_case("errors, %s", ctx_name);
    for (int op = 0; op < 4; op++) {
        float good = op == OP_UNIFORM ? 0.5f : 0.25f;
        uint64_t end = op == OP_GAUSSIAN ? ((uint64_t)1 << 63) - ERR_N : UINT64_MAX - ERR_N + 1;
        for (int bw = 0; bw < 2; bw++) {
            expect_op(ctx, op, bw, ERR_N, 64, 256, 448, good, 3, NK_OK, "valid");
            expect_op(ctx, op, bw, ERR_N, 64, 64, 448, good, 3, NK_OK, "in place");
            expect_op(ctx, op, bw, ERR_N, 64, 256, -1, good, end, NK_OK, "last word 2^64 - 1");
            expect_op(ctx, op, bw, ERR_N, -1, 256, 448, good, 3, NK_ERR_NULL_POINTER, "NULL in");
            expect_op(ctx, op, bw, ERR_N, 64, -1, 448, good, 3, NK_ERR_NULL_POINTER, "NULL out");
            expect_op(ctx, op, bw, 0, -1, -1, -1, good, UINT64_MAX, NK_OK, "n = 0, NULL data");
            expect_op(ctx, op, bw, ERR_N, 64, 256, 448, NAN, 3, NK_ERR_BAD_ARGUMENT, "NaN");
            expect_op(ctx, op, bw, 0, -1, -1, -1, NAN, 3, NK_ERR_BAD_ARGUMENT, "NaN, n = 0");
            expect_op(ctx, op, bw, ERR_N, 64, 256, 448, -0.5f, 3, NK_ERR_BAD_ARGUMENT, "< 0");
            expect_op(ctx, op, bw, ERR_N, 64, 256, 448, INFINITY, 3, NK_ERR_BAD_ARGUMENT, "inf");
            expect_op(ctx, op, bw, ERR_N, 64, 256, 448, -0.0f, 3, NK_OK, "-0.0");
            if (op == OP_UNIFORM) {
                expect_op(ctx, op, bw, ERR_N, 64, 256, 448, 2.0f, 3, NK_OK, "beta 2");
            } else {
                expect_op(ctx, op, bw, ERR_N, 64, 256, 448, 1.5f, 3, NK_ERR_BAD_ARGUMENT, "p 1.5");
                expect_op(ctx, op, bw, ERR_N, 64, 256, 448, 1.0f, 3,
                          op == OP_GAUSSIAN ? NK_ERR_BAD_ARGUMENT : NK_OK, "p = 1");
            }
            expect_op(ctx, op, bw, ERR_N, 64, 256, 448, good, end + 1, NK_ERR_OVERFLOW,
                      "word index past 2^64 - 1");
            expect_op(ctx, op, bw, ERR_N, 64, 256, 448, NAN, UINT64_MAX, NK_ERR_OVERFLOW,
                      "overflow before NaN");
            expect_op(ctx, op, bw, ERR_N, 66, 256, 448, good, 3, NK_ERR_MISALIGNED, "in + 2");
            expect_op(ctx, op, bw, ERR_N, 64, 257, 448, good, 3, NK_ERR_MISALIGNED, "out + 1");
            expect_op(ctx, op, bw, ERR_N, 64, 68, 448, good, 3, NK_ERR_ALIAS, "overlap");
            expect_op(ctx, op, bw, ERR_N, 64, 69, 448, NAN, 3, NK_ERR_BAD_ARGUMENT,
                      "NaN before misaligned overlap");
            expect_op(ctx, op, bw, ERR_N, 64, 69, 448, good, 3, NK_ERR_MISALIGNED,
                      "misaligned before overlap");
            if (has_mask(op)) {
                expect_op(ctx, op, bw, ERR_N, 64, 256, 256 + 4 * ERR_N - 1, good, 3, NK_ERR_ALIAS,
                          "mask overlapping the output");
                if (!bw) {
                    expect_op(ctx, op, bw, ERR_N, 64, 256, 70, good, 3, NK_ERR_ALIAS,
                              "mask overlapping x");
                }
            }
        }
    }

    /* nk_dropout_mask. */
    uint8_t m[8];
    memset(m, 0xA5, sizeof m);
    EXPECT_STATUS(nk_dropout_mask(ctx, 40, 0.5f, 1, 0, NULL), NK_ERR_NULL_POINTER, "mask NULL");
    EXPECT_STATUS(nk_dropout_mask(ctx, 40, NAN, 1, 0, m), NK_ERR_BAD_ARGUMENT, "mask, NaN p");
    EXPECT_STATUS(nk_dropout_mask(ctx, 40, 2.0f, 1, 0, m), NK_ERR_BAD_ARGUMENT, "mask, p = 2");
    EXPECT_STATUS(nk_dropout_mask(ctx, 40, 0.5f, 1, UINT64_MAX - 38, m), NK_ERR_OVERFLOW,
                  "mask, word index past 2^64 - 1");
    EXPECT_STATUS(nk_dropout_mask(ctx, 0, 2.0f, 1, 0, NULL), NK_ERR_BAD_ARGUMENT,
                  "mask, p = 2, n = 0");
    EXPECT_OK(nk_dropout_mask(ctx, 0, 0.5f, 1, UINT64_MAX, NULL), "mask, n = 0");
    int untouched = 1;
    for (size_t i = 0; i < sizeof m; i++) {
        untouched &= m[i] == 0xA5;
    }
    CHECK(untouched, "nk_dropout_mask wrote on error");

    /* Channel dropout: a 2x3x5 tensor (30 floats, 6 mask bits) in buffers of 40. */
    float x[40], y[40];
    uint8_t cm[2];
    for (int i = 0; i < 40; i++) {
        x[i] = (float)i;
        y[i] = -1.0f;
    }
    memset(cm, 0xA5, sizeof cm);
    nk_shape sh = make_shape(2, 3, 5, NK_LAYOUT_NCS);
    nk_shape bad_layout = sh;
    memset(&bad_layout.layout, 0xff, sizeof bad_layout.layout); /* not an enumerator: -1 */
    nk_shape huge = make_shape(2, 3, SIZE_MAX / 4, NK_LAYOUT_NSC);
    for (int bw = 0; bw < 2; bw++) {
        nk_status (*fn_fwd)(nk_context *, nk_shape, const float *, float *, float, uint64_t,
                            uint64_t, uint8_t *) = nk_channel_dropout_forward;
        nk_status (*fn_bwd)(nk_context *, nk_shape, const float *, float *, float, uint64_t,
                            uint64_t, const uint8_t *) = nk_channel_dropout_backward;
#define CHANNEL(shape, src, dst, p, off, mask) \
    (bw ? fn_bwd(ctx, (shape), (src), (dst), (p), 9, (off), (mask)) \
        : fn_fwd(ctx, (shape), (src), (dst), (p), 9, (off), (mask)))
        EXPECT_STATUS(CHANNEL(sh, NULL, y, 0.5f, 0, cm), NK_ERR_NULL_POINTER, "channel, NULL x");
        EXPECT_STATUS(CHANNEL(sh, x, NULL, 0.5f, 0, cm), NK_ERR_NULL_POINTER, "channel, NULL y");
        EXPECT_STATUS(CHANNEL(sh, x, y, NAN, 0, cm), NK_ERR_BAD_ARGUMENT, "channel, NaN p");
        EXPECT_STATUS(CHANNEL(bad_layout, x, y, 0.5f, 0, cm), NK_ERR_BAD_ARGUMENT,
                      "channel, bad layout");
        EXPECT_STATUS(CHANNEL(huge, x, y, 0.5f, 0, cm), NK_ERR_OVERFLOW, "channel, byte count");
        EXPECT_STATUS(CHANNEL(sh, x, y, 0.5f, UINT64_MAX - 4, cm), NK_ERR_OVERFLOW,
                      "channel, pair index past 2^64 - 1");
        EXPECT_STATUS(CHANNEL(sh, x, x + 1, 0.5f, 0, cm), NK_ERR_ALIAS, "channel, overlap");
        EXPECT_STATUS(CHANNEL(sh, x, y, 0.5f, 0, (uint8_t *)(void *)(y + 29)), NK_ERR_ALIAS,
                      "channel, mask overlapping the output");
        EXPECT_STATUS(CHANNEL(sh, (const float *)(const void *)((const char *)x + 1), y, 0.5f, 0,
                              cm),
                      NK_ERR_MISALIGNED, "channel, misaligned x");
#undef CHANNEL
    }
    int same = 1;
    for (int i = 0; i < 40; i++) {
        same &= x[i] == (float)i && y[i] == -1.0f;
    }
    CHECK(same && cm[0] == 0xA5 && cm[1] == 0xA5, "channel dropout wrote on error");
}

/* ------------------------------------------------------------------------------------------ */
/* Half-precision twins (_bf16, _f16)                                                           */

enum dk_half { HALF_BF16, HALF_F16 };
static const char *const k_half_names[2] = {"bf16", "f16"};

/* float to bf16 or f16 bits, to nearest, ties to even; NaN quiet with its upper payload;
 * beyond the range: infinity; f16 subnormals kept. */
static uint16_t half_from_float(int type, float v) {
    uint32_t b = bits_of(v);
    uint32_t a = b & 0x7FFFFFFFu;
    if (type == HALF_BF16) {
        if (a > 0x7F800000u) {
            return (uint16_t)((b >> 16) | 0x40u);
        }
        return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    }
    uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
    if (a > 0x7F800000u) {
        return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    }
    if (a >= 0x477FF000u) { /* 65520 and up: infinity */
        return (uint16_t)(sign | 0x7C00u);
    }
    if (a < 0x38800000u) { /* below 2^-14: a multiple of 2^-24, rounded to nearest even */
        double units = rint((double)fabsf(v) * 16777216.0);
        return (uint16_t)(sign | (uint16_t)units);
    }
    uint32_t r = (a + 0xFFFu + ((a >> 13) & 1u)) >> 13;
    return (uint16_t)(sign | (uint16_t)(r - ((127u - 15u) << 10)));
}

/* bf16 or f16 bits widened to float, exactly (NaN quiet). */
static float half_to_float(int type, uint16_t h) {
    uint32_t b;
    if (type == HALF_BF16) {
        b = (uint32_t)h << 16;
    } else {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
        uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
        if (e == 31) {
            b = sign | 0x7F800000u | (m << 13) | (m ? 0x00400000u : 0u);
        } else {
            float mag = e == 0 ? ldexpf((float)m, -24) : ldexpf((float)(m | 0x400u), (int)e - 25);
            b = sign | bits_of(mag);
        }
    }
    float v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* The same half: the same bits, or both NaN. */
static int same_half(int type, uint16_t a, uint16_t b) {
    return a == b || (isnan(half_to_float(type, a)) && isnan(half_to_float(type, b)));
}

/* One call of the twin of type `type` of an elementwise `op` (or, op 4, channel dropout over
 * `sh`): src and dst hold bits (dst == src: in place). */
static nk_status call_half(int type, int op, int backward, nk_context *ctx, size_t n,
                           nk_shape sh, const uint16_t *src, uint16_t *dst, float param,
                           uint64_t seed, uint64_t offset, uint8_t *mask) {
    int in_place = src == dst;
    nk_status s;
    if (type == HALF_BF16) {
        nk_bf16 *x = (nk_bf16 *)xmalloc(n * sizeof(nk_bf16));
        nk_bf16 *y = in_place ? x : (nk_bf16 *)xmalloc(n * sizeof(nk_bf16));
        for (size_t i = 0; i < n; i++) {
            x[i].bits = src[i];
        }
        switch (op) {
        case OP_DROPOUT:
            s = backward ? nk_dropout_backward_bf16(ctx, n, x, y, param, seed, offset, mask)
                         : nk_dropout_forward_bf16(ctx, n, x, y, param, seed, offset, mask);
            break;
        case OP_ALPHA:
            s = backward ? nk_alpha_dropout_backward_bf16(ctx, n, x, y, param, seed, offset, mask)
                         : nk_alpha_dropout_forward_bf16(ctx, n, x, y, param, seed, offset, mask);
            break;
        case OP_GAUSSIAN:
            s = backward ? nk_gaussian_dropout_backward_bf16(ctx, n, x, y, param, seed, offset)
                         : nk_gaussian_dropout_forward_bf16(ctx, n, x, y, param, seed, offset);
            break;
        case OP_UNIFORM:
            s = backward ? nk_uniform_dropout_backward_bf16(ctx, n, x, y, param, seed, offset)
                         : nk_uniform_dropout_forward_bf16(ctx, n, x, y, param, seed, offset);
            break;
        default:
            s = backward
                    ? nk_channel_dropout_backward_bf16(ctx, sh, x, y, param, seed, offset, mask)
                    : nk_channel_dropout_forward_bf16(ctx, sh, x, y, param, seed, offset, mask);
            break;
        }
        for (size_t i = 0; i < n; i++) {
            dst[i] = y[i].bits;
        }
        if (!in_place) {
            free(y);
        }
        free(x);
    } else {
        nk_f16 *x = (nk_f16 *)xmalloc(n * sizeof(nk_f16));
        nk_f16 *y = in_place ? x : (nk_f16 *)xmalloc(n * sizeof(nk_f16));
        for (size_t i = 0; i < n; i++) {
            x[i].bits = src[i];
        }
        switch (op) {
        case OP_DROPOUT:
            s = backward ? nk_dropout_backward_f16(ctx, n, x, y, param, seed, offset, mask)
                         : nk_dropout_forward_f16(ctx, n, x, y, param, seed, offset, mask);
            break;
        case OP_ALPHA:
            s = backward ? nk_alpha_dropout_backward_f16(ctx, n, x, y, param, seed, offset, mask)
                         : nk_alpha_dropout_forward_f16(ctx, n, x, y, param, seed, offset, mask);
            break;
        case OP_GAUSSIAN:
            s = backward ? nk_gaussian_dropout_backward_f16(ctx, n, x, y, param, seed, offset)
                         : nk_gaussian_dropout_forward_f16(ctx, n, x, y, param, seed, offset);
            break;
        case OP_UNIFORM:
            s = backward ? nk_uniform_dropout_backward_f16(ctx, n, x, y, param, seed, offset)
                         : nk_uniform_dropout_forward_f16(ctx, n, x, y, param, seed, offset);
            break;
        default:
            s = backward
                    ? nk_channel_dropout_backward_f16(ctx, sh, x, y, param, seed, offset, mask)
                    : nk_channel_dropout_forward_f16(ctx, sh, x, y, param, seed, offset, mask);
            break;
        }
        for (size_t i = 0; i < n; i++) {
            dst[i] = y[i].bits;
        }
        if (!in_place) {
            free(y);
        }
        free(x);
    }
    return s;
}

/* The float function of the same call (op 4: channel dropout). */
static nk_status call_float(int op, int backward, nk_context *ctx, size_t n, nk_shape sh,
                            const float *src, float *dst, float param, uint64_t seed,
                            uint64_t offset, uint8_t *mask) {
    if (op == 4) {
        return backward
                   ? nk_channel_dropout_backward(ctx, sh, src, dst, param, seed, offset, mask)
                   : nk_channel_dropout_forward(ctx, sh, src, dst, param, seed, offset, mask);
    }
    return call_op(op, backward, ctx, n, src, dst, param, seed, offset, mask);
}

/* Every twin against its float function: the twin's output is the float function's output on
 * the widened input, rounded once to the type; masks the same bytes. Forward, backward made
 * again and from the forward's mask; in place and out of place. */
static void test_half_twins(nk_context *ctx, const char *ctx_name) {
    static const size_t sizes[] = {1, 7, 33, 1000, 70001};
    static const float specials[] = {NAN,      INFINITY, -INFINITY, -0.0f,     65504.0f,
                                     52416.0f, 65520.0f, 5.96e-8f,  6.097e-5f, 9.2e-41f};
    for (int type = 0; type < 2; type++) {
        for (int op = 0; op < 5; op++) {
            for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
                size_t n = sizes[k];
                nk_shape sh = make_shape(1, n, 1, NK_LAYOUT_NCS);
                if (op == 4 && n > 33) {
                    sh = n == 1000 ? make_shape(2, 5, 100, NK_LAYOUT_NSC)
                                   : make_shape(7, 73, 137, NK_LAYOUT_NCS);
                    n = sh.batch * sh.channels * sh.spatial;
                }
                size_t mbytes = mask_bytes(op == 4 ? sh.batch * sh.channels : n);
                float param = op == OP_UNIFORM ? 0.75f : 0.2f;
                uint64_t seed = next_u64();
                uint64_t offset = ((uint64_t)1 << 40) + 3 + k;
                set_case("%s twin of %s, n %zu, %s", k_half_names[type],
                         op == 4 ? "channel dropout" : k_op_names[op], n, ctx_name);
                uint16_t *x = (uint16_t *)xmalloc(n * sizeof(uint16_t));
                uint16_t *y = (uint16_t *)xmalloc(n * sizeof(uint16_t));
                float *xf = alloc_f32(n), *yf = alloc_f32(n);
                uint8_t *mask = alloc_u8(mbytes), *mask_f = alloc_u8(mbytes);
                fill(xf, n, 1);
                for (size_t i = 0; i < n; i++) {
                    if (i % 7 == 3) {
                        xf[i] = specials[(i / 7) % (sizeof specials / sizeof specials[0])];
                    } else if (i % 3 == 0) {
                        xf[i] *= 300.0f;
                    }
                    x[i] = half_from_float(type, xf[i]);
                    xf[i] = half_to_float(type, x[i]);
                }
                for (int backward = 0; backward < 3; backward++) {
                    /* 0: forward, 1: backward made again, 2: backward from the mask. */
                    int masked = op == OP_DROPOUT || op == OP_ALPHA || op == 4;
                    if (backward == 2 && !masked) {
                        continue;
                    }
                    uint8_t *m = masked && backward != 1 ? mask : NULL;
                    uint8_t *mf = masked && backward != 1 ? mask_f : NULL;
                    if (backward == 0 && masked) {
                        memset(mask, 0xA5, mbytes);
                        memset(mask_f, 0x5A, mbytes);
                    }
                    poison(yf, n);
                    EXPECT_OK(call_float(op, backward > 0, ctx, n, sh, xf, yf, param, seed,
                                         offset, mf),
                              "float function");
                    for (int in_place = 0; in_place < 2; in_place++) {
                        uint16_t *dst = y;
                        if (in_place) {
                            memcpy(y, x, n * sizeof(uint16_t));
                        } else {
                            memset(y, 0x7f, n * sizeof(uint16_t));
                        }
                        EXPECT_OK(call_half(type, op, backward > 0, ctx, n, sh,
                                            in_place ? dst : x, dst, param, seed, offset, m),
                                  "twin");
                        size_t d = n;
                        for (size_t i = 0; i < n && d == n; i++) {
                            if (!same_half(type, y[i], half_from_float(type, yf[i]))) {
                                d = i;
                            }
                        }
                        CHECK(d == n, "%s (in place %d): element %zu is %#x, want %#x",
                              backward == 0 ? "forward" : "backward", in_place, d,
                              d < n ? (unsigned)y[d] : 0u,
                              d < n ? (unsigned)half_from_float(type, yf[d]) : 0u);
                        if (backward == 0 && masked) {
                            CHECK(memcmp(mask, mask_f, mbytes) == 0, "forward: mask");
                        }
                    }
                }
                free(x);
                free(y);
                free(xf);
                free(yf);
                free(mask);
                free(mask_f);
            }
        }
    }
    /* The error contract: odd addresses, overlap, NULL; nothing written. */
    set_case("twins' errors, %s", ctx_name);
    nk_bf16 *b = (nk_bf16 *)xmalloc(40 * sizeof(nk_bf16));
    nk_f16 *h = (nk_f16 *)xmalloc(40 * sizeof(nk_f16));
    memset(b, 0, 40 * sizeof(nk_bf16));
    memset(h, 0, 40 * sizeof(nk_f16));
    unsigned char *raw = (unsigned char *)xmalloc(64);
    memset(raw, 0, 64);
    EXPECT_STATUS(nk_dropout_forward_bf16(ctx, 8, (const nk_bf16 *)(void *)(raw + 1), b, 0.5f, 1,
                                          0, NULL),
                  NK_ERR_MISALIGNED, "bf16: odd x");
    EXPECT_STATUS(nk_dropout_forward_f16(ctx, 8, h, (nk_f16 *)(void *)(raw + 1), 0.5f, 1, 0, NULL),
                  NK_ERR_MISALIGNED, "f16: odd y");
    EXPECT_STATUS(nk_dropout_forward_bf16(ctx, 8, b, b + 1, 0.5f, 1, 0, NULL), NK_ERR_ALIAS,
                  "bf16: y overlapping x");
    EXPECT_STATUS(nk_uniform_dropout_forward_f16(ctx, 8, h + 3, h, 0.5f, 1, 0), NK_ERR_ALIAS,
                  "f16: y overlapping x");
    EXPECT_OK(nk_dropout_forward_bf16(ctx, 8, b, b + 8, 0.5f, 1, 0, NULL),
              "bf16: y right after x (2 bytes each)");
    EXPECT_STATUS(nk_gaussian_dropout_backward_bf16(ctx, 8, NULL, b, 0.5f, 1, 0),
                  NK_ERR_NULL_POINTER, "bf16: NULL dy");
    EXPECT_STATUS(nk_alpha_dropout_backward_f16(ctx, 8, h, NULL, 0.5f, 1, 0, NULL),
                  NK_ERR_NULL_POINTER, "f16: NULL dx");
    int untouched = 1;
    for (size_t i = 0; i < 40; i++) {
        untouched &= h[i].bits == 0;
    }
    for (size_t i = 0; i < 64; i++) {
        untouched &= raw[i] == 0;
    }
    CHECK(untouched, "a twin wrote on error");
    free(b);
    free(h);
    free(raw);
}

/* ------------------------------------------------------------------------------------------ */

int main(void) {
    test_philox();

    static const nk_isa all_isas[4] = {NK_ISA_PORTABLE, NK_ISA_AVX2, NK_ISA_AVX512, NK_ISA_NEON};
    static const char *const isa_names[4] = {"portable", "avx2", "avx512", "neon"};
    nk_context *one[4] = {NULL, NULL, NULL, NULL};
    nk_context *three[4] = {NULL, NULL, NULL, NULL};
    int have[4] = {0, 0, 0, 0};
    printf("dropout: ISAs");
    for (int i = 0; i < 4; i++) {
        if (nk_context_create(1, &one[i]) != NK_OK || nk_context_create(3, &three[i]) != NK_OK) {
            fprintf(stderr, "cannot create contexts\n");
            return 1;
        }
        have[i] = nk_context_set_isa(one[i], all_isas[i]) == NK_OK;
        if (have[i]) {
            EXPECT_OK(nk_context_set_isa(three[i], all_isas[i]), "nk_context_set_isa");
            printf(" %s", isa_names[i]);
        }
    }
    printf("\n");

    static const size_t sizes[] = {0, 1, 7, 8, 9, 63, 1000, 70001};
    static const float probs[] = {0.0f, 0.1f, 0.5f, 0.9f, 1.0f};
    for (int i = 0; i < 4; i++) {
        if (!have[i]) {
            continue;
        }
        char name[64];
        snprintf(name, sizeof name, "%s, 1 thread", isa_names[i]);
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size_t n = sizes[k];
            for (size_t j = 0; j < sizeof probs / sizeof probs[0]; j++) {
                float p = probs[j];
                uint64_t seed = next_u64();
                uint64_t offsets[4] = {0, 3 + k, ((uint64_t)1 << 34) - 5,
                                       UINT64_MAX - (n > 0 ? n - 1 : 0)};
                for (int o = 0; o < 4; o++) {
                    test_op(one[i], name, OP_DROPOUT, n, p, seed, offsets[o]);
                    test_op(one[i], name, OP_ALPHA, n, p, seed, offsets[o]);
                    test_op(one[i], name, OP_UNIFORM, n, 2.0f * p, seed, offsets[o]);
                    uint64_t g_off = offsets[o] > ((uint64_t)1 << 62) ? ((uint64_t)1 << 63) - n
                                                                       : offsets[o];
                    test_op(one[i], name, OP_GAUSSIAN, n, p < 1.0f ? p : 0.99f, seed, g_off);
                }
            }
        }
        for (int op = 0; op < 4; op++) {
            test_split(one[i], name, op, 0.3f);
            test_split(three[i], "3 threads", op, 0.3f);
        }
        for (int l = 0; l < 2; l++) {
            nk_layout layout = l == 0 ? NK_LAYOUT_NCS : NK_LAYOUT_NSC;
            test_channel(one[i], name, make_shape(3, 5, 7, layout), 0.5f, 11, 3);
            test_channel(one[i], name, make_shape(1, 1, 1, layout), 0.5f, 12, 0);
            test_channel(three[i], "3 threads", make_shape(32, 19, 300, layout), 0.2f, 13, 1001);
            test_channel(one[i], name, make_shape(4, 9, 0, layout), 0.2f, 13, 1001);
            test_channel(NULL, "default context", make_shape(6, 64, 100, layout), 0.7f, 14, 5);
        }
        char what[96];
        snprintf(what, sizeof what, "%s: 1 vs 3 threads", isa_names[i]);
        test_same_bits(one[i], three[i], what, 1);
        snprintf(what, sizeof what, "%s vs portable", isa_names[i]);
        test_same_bits(one[i], one[0], what, i == 0);
        test_errors(one[i], name);
        test_half_twins(one[i], name);
        test_half_twins(three[i], "3 threads");
    }
    test_errors(NULL, "default context");
    test_op(NULL, "default context", OP_DROPOUT, 100000, 0.25f, 1, 2);
    test_op(NULL, "default context", OP_GAUSSIAN, 100000, 0.25f, 1, 2);

    for (int i = 0; i < 4; i++) {
        nk_context_destroy(one[i]);
        nk_context_destroy(three[i]);
    }
    printf("dropout: %d checks, %d failed\n", g_checks, g_failures);
    if (g_failures > 0) {
        fprintf(stderr, "%d of %d checks FAILED\n", g_failures, g_checks);
        return 1;
    }
    return 0;
}
