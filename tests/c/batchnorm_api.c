/*
 * The C API of normkit, checked from C (and, compiled as C++, from C++) against the committed
 * header and the static library.
 *
 * The batch-norm forward functions, moments, fold, the library and context functions are called
 * here (the backward passes, the other normalizations and the dropout family have programs of
 * their own in tests/c). Each result is compared with a naive double-precision loop written in this file; every
 * error case checks the status code, that the error message is set, and that no byte of any
 * buffer changed. Cases run on every ISA the CPU
 * has, in both layouts, on a 2-thread context and on the default (NULL) context; results must be
 * bitwise identical across thread counts, between in-place and out-of-place calls, between a
 * call alone and the same call made concurrently from several threads, and between a context
 * with threads of its own and an executor context (nk_context_create_with_executor).
 *
 * Exit status 0 when every check passes; otherwise 1, with one line per failed check on stderr.
 * Built and run by tests/c_api.rs.
 */

#define _POSIX_C_SOURCE 200809L /* pthreads */

#include "normkit.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define NK_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define NK_PRINTF(f, a)
#endif

/* ------------------------------------------------------------------------------------------ */
/* Reporting                                                                                    */

static int g_checks = 0;
static int g_failures = 0;
static char g_case[256] = "";
/* Largest error / tolerance ratio seen by a passing numeric comparison (how much slack is left). */
static double g_worst_ratio = 0.0;
static char g_worst_what[640] = "";

static void set_case(const char *fmt, ...) NK_PRINTF(1, 2);
static void set_case(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(g_case, sizeof g_case, fmt, args);
    va_end(args);
}

static void check_at(int ok, int line, const char *fmt, ...) NK_PRINTF(3, 4);
static void check_at(int ok, int line, const char *fmt, ...) {
    g_checks++;
    if (ok) {
        return;
    }
    g_failures++;
    if (g_failures <= 200) {
        va_list args;
        va_start(args, fmt);
        fprintf(stderr, "FAIL (line %d) [%s]: ", line, g_case);
        vfprintf(stderr, fmt, args);
        fputc('\n', stderr);
        va_end(args);
    }
}

/* CHECK(condition, printf-style message naming the check, ...) */
#define CHECK(cond, ...) check_at((cond) ? 1 : 0, __LINE__, __VA_ARGS__)

static const char *status_name(nk_status s) {
    switch (s) {
    case NK_OK: return "NK_OK";
    case NK_ERR_NULL_POINTER: return "NK_ERR_NULL_POINTER";
    case NK_ERR_BAD_SHAPE: return "NK_ERR_BAD_SHAPE";
    case NK_ERR_BAD_ARGUMENT: return "NK_ERR_BAD_ARGUMENT";
    case NK_ERR_OVERFLOW: return "NK_ERR_OVERFLOW";
    case NK_ERR_ALIAS: return "NK_ERR_ALIAS";
    case NK_ERR_MISALIGNED: return "NK_ERR_MISALIGNED";
    case NK_ERR_UNSUPPORTED: return "NK_ERR_UNSUPPORTED";
    case NK_ERR_INTERNAL: return "NK_ERR_INTERNAL";
    }
    return "(unknown status)";
}

static void expect_status_at(nk_status got, nk_status want, int line, const char *what) {
    check_at(got == want, line, "%s: got %s, want %s (last error: \"%s\")", what, status_name(got),
             status_name(want), nk_last_error_message());
    if (got != NK_OK && got == want) {
        check_at(nk_last_error_message()[0] != '\0', line, "%s: nk_last_error_message is empty",
                 what);
    }
}

#define EXPECT_STATUS(got, want, what) expect_status_at((got), (want), __LINE__, (what))
#define EXPECT_OK(got, what) expect_status_at((got), NK_OK, __LINE__, (what))

/* ------------------------------------------------------------------------------------------ */
/* Memory, random data, shapes                                                                  */

static void *xmalloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 16);
    if (p == NULL) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

static float *alloc_f32(size_t n) { return (float *)xmalloc(n * sizeof(float)); }
static double *alloc_f64(size_t n) { return (double *)xmalloc(n * sizeof(double)); }

static float *copy_f32(const float *src, size_t n) {
    float *dst = alloc_f32(n);
    if (n > 0) {
        memcpy(dst, src, n * sizeof(float));
    }
    return dst;
}

/* Fills with a recognisable NaN pattern, so that an output left unwritten shows. */
static void poison_f32(float *p, size_t n) {
    if (n > 0) {
        memset(p, 0x7f, n * sizeof(float));
    }
}

static int same_bytes(const void *a, const void *b, size_t bytes) {
    return bytes == 0 || memcmp(a, b, bytes) == 0;
}

static uint64_t g_rng = 0x243F6A8885A308D3ull;

/* Uniform in [0, 1) (xorshift64*). */
static double uniform01(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (double)((g_rng * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

/* Standard normal (Box-Muller). */
static double normal01(void) {
    const double two_pi = 6.283185307179586;
    double u1 = 1.0 - uniform01(); /* (0, 1] */
    double u2 = uniform01();
    return sqrt(-2.0 * log(u1)) * cos(two_pi * u2);
}

static nk_shape make_shape(size_t batch, size_t channels, size_t spatial, nk_layout layout) {
    nk_shape s;
    s.batch = batch;
    s.channels = channels;
    s.spatial = spatial;
    s.layout = layout;
    return s;
}

static size_t elements_of(nk_shape s) { return s.batch * s.channels * s.spatial; }

/* Index of element (n, c, s), as the contract defines the two layouts. */
static size_t at(nk_shape sh, size_t n, size_t c, size_t s) {
    if (sh.layout == NK_LAYOUT_NCS) {
        return (n * sh.channels + c) * sh.spatial + s;
    }
    return (n * sh.spatial + s) * sh.channels + c;
}

static const char *layout_name(nk_layout l) { return l == NK_LAYOUT_NCS ? "NCS" : "NSC"; }

static const char *isa_name(nk_isa isa) {
    switch (isa) {
    case NK_ISA_AUTO: return "auto";
    case NK_ISA_PORTABLE: return "portable";
    case NK_ISA_AVX2: return "avx2";
    case NK_ISA_AVX512: return "avx512";
    case NK_ISA_NEON: return "neon";
    }
    return "(unknown isa)";
}

/* ------------------------------------------------------------------------------------------ */
/* Naive float64 reference                                                                      */

/* Per-channel mean and M2 (sum of squared deviations), two passes in double. */
static void ref_moments(nk_shape sh, const float *x, double *mean, double *m2) {
    size_t count = sh.batch * sh.spatial;
    for (size_t c = 0; c < sh.channels; c++) {
        double sum = 0.0;
        for (size_t n = 0; n < sh.batch; n++) {
            for (size_t s = 0; s < sh.spatial; s++) {
                sum += x[at(sh, n, c, s)];
            }
        }
        double mu = count > 0 ? sum / (double)count : 0.0;
        double dev = 0.0;
        for (size_t n = 0; n < sh.batch; n++) {
            for (size_t s = 0; s < sh.spatial; s++) {
                double d = x[at(sh, n, c, s)] - mu;
                dev += d * d;
            }
        }
        mean[c] = mu;
        m2[c] = dev;
    }
}

/* y = gamma * (x - mean) / sqrt(var + eps) + beta, then max(y, 0) if relu; NULL gamma = 1,
 * NULL beta = 0. */
static void ref_normalize(nk_shape sh, const float *x, double *y, const float *gamma,
                          const float *beta, const double *mean, const double *var, double eps,
                          int relu) {
    for (size_t c = 0; c < sh.channels; c++) {
        double g = gamma ? gamma[c] : 1.0;
        double b = beta ? beta[c] : 0.0;
        double invstd = 1.0 / sqrt(var[c] + eps);
        for (size_t n = 0; n < sh.batch; n++) {
            for (size_t s = 0; s < sh.spatial; s++) {
                size_t i = at(sh, n, c, s);
                double v = g * (x[i] - mean[c]) * invstd + b;
                if (relu && v < 0.0) {
                    v = 0.0;
                }
                y[i] = v;
            }
        }
    }
}

/* Checks |got - want| <= abs_tol + rel_tol * |want| for every element (NaN must match NaN). */
static void compare_at(int line, const char *what, const float *got_f, const double *got_d,
                       const double *want, size_t n, double abs_tol, double rel_tol) {
    size_t bad = 0, worst_i = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double got = got_f ? (double)got_f[i] : got_d[i];
        double tol = abs_tol + rel_tol * fabs(want[i]);
        double ratio;
        if (isnan(want[i]) || isnan(got)) {
            ratio = (isnan(want[i]) && isnan(got)) ? 0.0 : INFINITY;
        } else {
            ratio = fabs(got - want[i]) / tol;
        }
        if (!(ratio <= 1.0)) {
            bad++;
        }
        if (!(ratio <= worst)) {
            worst = ratio;
            worst_i = i;
        }
    }
    if (bad > 0) {
        double got = got_f ? (double)got_f[worst_i] : got_d[worst_i];
        check_at(0, line, "%s: %zu of %zu values off; worst [%zu]: got %.9g, want %.9g", what, bad,
                 n, worst_i, got, want[worst_i]);
    } else {
        check_at(1, line, "%s", what);
        if (worst > g_worst_ratio) {
            g_worst_ratio = worst;
            snprintf(g_worst_what, sizeof g_worst_what, "%s [%s]", what, g_case);
        }
    }
}

#define COMPARE_F32(what, got, want, n, abs_tol, rel_tol) \
    compare_at(__LINE__, (what), (got), NULL, (want), (n), (abs_tol), (rel_tol))
#define COMPARE_F64(what, got, want, n, abs_tol, rel_tol) \
    compare_at(__LINE__, (what), NULL, (got), (want), (n), (abs_tol), (rel_tol))

/* Tolerances. Outputs of a normalization are O(1); statistics scale with the data. */
#define Y_ABS 1e-5
#define Y_REL 1e-5

/* ------------------------------------------------------------------------------------------ */
/* Library, errors, context                                                                     */

static void test_library(void) {
    set_case("library");
    CHECK(nk_last_error_message() != NULL && nk_last_error_message()[0] == '\0',
          "nk_last_error_message is \"\" before any failed call");
    CHECK(nk_version() == ((uint32_t)NK_VERSION_MAJOR << 16 | (uint32_t)NK_VERSION_MINOR << 8 |
                           (uint32_t)NK_VERSION_PATCH),
          "nk_version() = %#x matches NK_VERSION_MAJOR/MINOR/PATCH", (unsigned)nk_version());

    static const nk_status all[] = {NK_OK,           NK_ERR_NULL_POINTER, NK_ERR_BAD_SHAPE,
                                    NK_ERR_BAD_ARGUMENT, NK_ERR_OVERFLOW, NK_ERR_ALIAS,
                                    NK_ERR_MISALIGNED, NK_ERR_UNSUPPORTED, NK_ERR_INTERNAL};
    const size_t count = sizeof all / sizeof all[0];
    for (size_t i = 0; i < count; i++) {
        const char *text = nk_status_string(all[i]);
        CHECK(text != NULL && text[0] != '\0', "nk_status_string(%s) is a non-empty string",
              status_name(all[i]));
        for (size_t j = 0; j < i && text != NULL; j++) {
            const char *other = nk_status_string(all[j]);
            CHECK(other != NULL && strcmp(text, other) != 0,
                  "nk_status_string(%s) differs from nk_status_string(%s)", status_name(all[i]),
                  status_name(all[j]));
        }
    }
#ifndef __cplusplus
    /* An out-of-range enum value is valid C (not C++): it still gets a string. */
    CHECK(nk_status_string((nk_status)99) != NULL, "nk_status_string(99) is not NULL");
#endif
}

/* The ISAs this CPU runs, found by trying each on `ctx`; returns how many. */
static size_t test_context_isas(nk_context *ctx, nk_isa *found) {
    set_case("context ISA");
    static const nk_isa candidates[] = {NK_ISA_PORTABLE, NK_ISA_AVX2, NK_ISA_AVX512,
                                        NK_ISA_NEON};
    size_t n = 0;
    EXPECT_OK(nk_context_set_isa(ctx, NK_ISA_AUTO), "nk_context_set_isa(AUTO)");
    nk_isa best = nk_context_isa(ctx);
    CHECK(best == nk_context_isa(NULL),
          "a fresh context and the default context use the same (best) ISA: %s vs %s",
          isa_name(best), isa_name(nk_context_isa(NULL)));
    CHECK(best != NK_ISA_AUTO, "nk_context_isa reports a concrete ISA, not AUTO");
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        nk_isa isa = candidates[i];
        nk_isa before = nk_context_isa(ctx);
        nk_status s = nk_context_set_isa(ctx, isa);
        if (s == NK_OK) {
            CHECK(nk_context_isa(ctx) == isa, "after set_isa(%s) the context uses %s",
                  isa_name(isa), isa_name(nk_context_isa(ctx)));
            found[n++] = isa;
        } else {
            EXPECT_STATUS(s, NK_ERR_UNSUPPORTED, "nk_context_set_isa of an ISA the CPU lacks");
            CHECK(nk_context_isa(ctx) == before, "a failed set_isa(%s) leaves the ISA unchanged",
                  isa_name(isa));
        }
#if defined(__x86_64__) || defined(_M_X64)
        if (isa == NK_ISA_PORTABLE || isa == NK_ISA_NEON) {
            CHECK(s == (isa == NK_ISA_PORTABLE ? NK_OK : NK_ERR_UNSUPPORTED),
                  "on x86-64, PORTABLE is supported and NEON is not (%s gave %s)",
                  isa_name(isa), status_name(s));
        }
        if (isa == NK_ISA_AVX512 && s == NK_OK) {
            CHECK(best == NK_ISA_AVX512, "with AVX-512 present, AUTO picks it (picked %s)",
                  isa_name(best));
        }
        if (isa == NK_ISA_AVX2 && s == NK_OK) {
            CHECK(best == NK_ISA_AVX2 || best == NK_ISA_AVX512,
                  "with AVX2 present, AUTO picks AVX2 or better (picked %s)", isa_name(best));
        }
#endif
    }
    CHECK(n >= 1 && found[0] == NK_ISA_PORTABLE, "NK_ISA_PORTABLE is always supported");

    EXPECT_STATUS(nk_context_set_isa(NULL, NK_ISA_PORTABLE), NK_ERR_NULL_POINTER,
                  "nk_context_set_isa(NULL ctx)");
#ifndef __cplusplus
    {
        nk_isa before = nk_context_isa(ctx);
        EXPECT_STATUS(nk_context_set_isa(ctx, (nk_isa)99), NK_ERR_BAD_ARGUMENT,
                      "nk_context_set_isa(99)");
        CHECK(nk_context_isa(ctx) == before, "set_isa(99) leaves the ISA unchanged");
    }
#endif
    EXPECT_OK(nk_context_set_isa(ctx, NK_ISA_AUTO), "nk_context_set_isa(AUTO) restores");
    CHECK(nk_context_isa(ctx) == best, "AUTO restores the best ISA");
    return n;
}

static void test_context_lifecycle(void) {
    set_case("context lifecycle");
    EXPECT_STATUS(nk_context_create(2, NULL), NK_ERR_NULL_POINTER, "nk_context_create(out NULL)");
    nk_context_destroy(NULL); /* a no-op */
    nk_context *ctx = NULL;
    EXPECT_OK(nk_context_create(0, &ctx), "nk_context_create(0 = all cores)");
    CHECK(ctx != NULL, "nk_context_create wrote a context");
    nk_context_destroy(ctx);
    ctx = NULL;
    EXPECT_OK(nk_context_create(1, &ctx), "nk_context_create(1)");
    CHECK(ctx != NULL, "nk_context_create(1) wrote a context");
    nk_context_destroy(ctx);
}

/* ------------------------------------------------------------------------------------------ */
/* Batch norm: values against the reference                                                    */

typedef struct {
    nk_shape shape;
    size_t n, channels, count;
    float *x, *gamma, *beta, *rm0, *rv0;
    double *mean, *m2, *var_b, *var_u; /* reference statistics */
    double max_sd, max_abs_mean;
} bn_data;

static bn_data make_data(nk_shape sh, double offset) {
    bn_data d;
    d.shape = sh;
    d.n = elements_of(sh);
    d.channels = sh.channels;
    d.count = sh.batch * sh.spatial;
    d.x = alloc_f32(d.n);
    d.gamma = alloc_f32(d.channels);
    d.beta = alloc_f32(d.channels);
    d.rm0 = alloc_f32(d.channels);
    d.rv0 = alloc_f32(d.channels);
    for (size_t c = 0; c < sh.channels; c++) {
        double center = offset + 0.25 * (double)(c % 7) - 0.5;
        double spread = 0.5 + (double)(c % 3);
        for (size_t n = 0; n < sh.batch; n++) {
            for (size_t s = 0; s < sh.spatial; s++) {
                d.x[at(sh, n, c, s)] = (float)(center + spread * normal01());
            }
        }
        d.gamma[c] = (float)((c % 4 == 3 ? -1.0 : 1.0) * (0.5 + uniform01()));
        d.beta[c] = (float)(uniform01() - 0.5);
        d.rm0[c] = (float)(uniform01() * 2.0 - 1.0);
        d.rv0[c] = (float)(0.5 + uniform01());
    }
    d.mean = alloc_f64(d.channels);
    d.m2 = alloc_f64(d.channels);
    d.var_b = alloc_f64(d.channels);
    d.var_u = alloc_f64(d.channels);
    ref_moments(sh, d.x, d.mean, d.m2);
    d.max_sd = 0.0;
    d.max_abs_mean = 0.0;
    for (size_t c = 0; c < sh.channels; c++) {
        d.var_b[c] = d.count > 0 ? d.m2[c] / (double)d.count : 0.0;
        d.var_u[c] = d.count > 1 ? d.m2[c] / (double)(d.count - 1) : 0.0;
        if (sqrt(d.var_b[c]) > d.max_sd) {
            d.max_sd = sqrt(d.var_b[c]);
        }
        if (fabs(d.mean[c]) > d.max_abs_mean) {
            d.max_abs_mean = fabs(d.mean[c]);
        }
    }
    return d;
}

static void free_data(bn_data *d) {
    free(d->x);
    free(d->gamma);
    free(d->beta);
    free(d->rm0);
    free(d->rv0);
    free(d->mean);
    free(d->m2);
    free(d->var_b);
    free(d->var_u);
}

/* Outputs of one training forward. */
typedef struct {
    float *y, *rm, *rv, *save_mean, *save_invstd;
} bn_out;

static bn_out make_out(const bn_data *d) {
    bn_out o;
    o.y = alloc_f32(d->n);
    poison_f32(o.y, d->n);
    o.rm = copy_f32(d->rm0, d->channels);
    o.rv = copy_f32(d->rv0, d->channels);
    o.save_mean = alloc_f32(d->channels);
    o.save_invstd = alloc_f32(d->channels);
    poison_f32(o.save_mean, d->channels);
    poison_f32(o.save_invstd, d->channels);
    return o;
}

static void free_out(bn_out *o) {
    free(o->y);
    free(o->rm);
    free(o->rv);
    free(o->save_mean);
    free(o->save_invstd);
}

static int same_out(const bn_out *a, const bn_out *b, const bn_data *d) {
    size_t c = d->channels * sizeof(float);
    return same_bytes(a->y, b->y, d->n * sizeof(float)) && same_bytes(a->rm, b->rm, c) &&
           same_bytes(a->rv, b->rv, c) && same_bytes(a->save_mean, b->save_mean, c) &&
           same_bytes(a->save_invstd, b->save_invstd, c);
}

static const float k_eps = 1e-5f;
static const float k_momentum = 0.1f;

/* Checks saved and running statistics of a training forward against the reference. */
static void check_stats(const bn_data *d, const bn_out *o, const double *mean, const double *var_b,
                        const double *var_running, double momentum, const char *what) {
    size_t c = d->channels;
    double *want = alloc_f64(c);
    char label[160];
    double m = momentum;

    snprintf(label, sizeof label, "%s: save_mean", what);
    COMPARE_F32(label, o->save_mean, mean, c, 1e-5 * d->max_sd + 1e-30, 2e-7);
    for (size_t i = 0; i < c; i++) {
        want[i] = 1.0 / sqrt(var_b[i] + (double)k_eps);
    }
    snprintf(label, sizeof label, "%s: save_invstd", what);
    COMPARE_F32(label, o->save_invstd, want, c, 0.0, 1e-5);
    for (size_t i = 0; i < c; i++) {
        want[i] = (1.0 - m) * d->rm0[i] + m * mean[i];
    }
    snprintf(label, sizeof label, "%s: running_mean", what);
    COMPARE_F32(label, o->rm, want, c, 1e-5 * d->max_sd * m + 1e-7, 2e-7);
    for (size_t i = 0; i < c; i++) {
        want[i] = (1.0 - m) * d->rv0[i] + m * var_running[i];
    }
    snprintf(label, sizeof label, "%s: running_var", what);
    COMPARE_F32(label, o->rv, want, c, 1e-7, 1e-5);
    free(want);
}

static void test_training(nk_context *ctx, const bn_data *d, bn_out *full) {
    nk_shape sh = d->shape;
    size_t c = d->channels;
    double *y_ref = alloc_f64(d->n);
    double m = (double)k_momentum;

    /* Everything given, unbiased running variance. Kept in `full` for later comparisons. */
    EXPECT_OK(nk_batchnorm_forward_training(ctx, sh, d->x, full->y, d->gamma, d->beta, k_eps,
                                            k_momentum, 0, full->rm, full->rv, full->save_mean,
                                            full->save_invstd),
              "training forward");
    ref_normalize(sh, d->x, y_ref, d->gamma, d->beta, d->mean, d->var_b, k_eps, 0);
    COMPARE_F32("training y", full->y, y_ref, d->n, Y_ABS, Y_REL);
    check_stats(d, full, d->mean, d->var_b, d->var_u, m, "training");

    /* In place (y == x): bitwise the same as out of place. */
    {
        bn_out o = make_out(d);
        float *z = copy_f32(d->x, d->n);
        EXPECT_OK(nk_batchnorm_forward_training(ctx, sh, z, z, d->gamma, d->beta, k_eps,
                                                k_momentum, 0, o.rm, o.rv, o.save_mean,
                                                o.save_invstd),
                  "training forward in place");
        free(o.y);
        o.y = z;
        CHECK(same_out(&o, full, d), "training in place is bitwise equal to out of place");
        free_out(&o);
    }

    /* No affine (gamma = 1, beta = 0), biased running variance, momentum 1 replaces, no saves. */
    {
        bn_out o = make_out(d);
        float *sm_before = copy_f32(o.save_mean, c);
        EXPECT_OK(nk_batchnorm_forward_training(ctx, sh, d->x, o.y, NULL, NULL, k_eps, 1.0f,
                                                NK_BN_RUNNING_VAR_BIASED, o.rm, o.rv, NULL, NULL),
                  "training forward, no affine, biased, momentum 1");
        ref_normalize(sh, d->x, y_ref, NULL, NULL, d->mean, d->var_b, k_eps, 0);
        COMPARE_F32("training y without gamma/beta", o.y, y_ref, d->n, Y_ABS, Y_REL);
        COMPARE_F32("running_mean with momentum 1 is the batch mean", o.rm, d->mean, c,
                    1e-5 * d->max_sd + 1e-30, 2e-7);
        COMPARE_F32("running_var with momentum 1 and NK_BN_RUNNING_VAR_BIASED is the biased "
                    "variance",
                    o.rv, d->var_b, c, 1e-30, 1e-5);
        CHECK(same_bytes(sm_before, o.save_mean, c * sizeof(float)),
              "save_mean untouched when save_invstd/save_mean are NULL");
        free(sm_before);
        free_out(&o);
    }

    /* momentum 0 keeps the running statistics exactly; no running statistics at all. */
    {
        bn_out o = make_out(d);
        EXPECT_OK(nk_batchnorm_forward_training(ctx, sh, d->x, o.y, d->gamma, d->beta, k_eps,
                                                0.0f, 0, o.rm, o.rv, o.save_mean, o.save_invstd),
                  "training forward, momentum 0");
        CHECK(same_bytes(o.rm, d->rm0, c * sizeof(float)) &&
                  same_bytes(o.rv, d->rv0, c * sizeof(float)),
              "momentum 0 leaves running statistics bitwise unchanged");
        CHECK(same_bytes(o.y, full->y, d->n * sizeof(float)),
              "momentum does not change y (momentum 0 vs 0.1)");
        poison_f32(o.y, d->n);
        EXPECT_OK(nk_batchnorm_forward_training(ctx, sh, d->x, o.y, d->gamma, d->beta, k_eps,
                                                k_momentum, 0, NULL, NULL, NULL, NULL),
                  "training forward without running or saved statistics");
        CHECK(same_bytes(o.y, full->y, d->n * sizeof(float)),
              "y without running/saved statistics is bitwise the same");
        free_out(&o);
    }
    free(y_ref);
}

static void test_inference(nk_context *ctx, const bn_data *d) {
    nk_shape sh = d->shape;
    size_t c = d->channels;
    float *mean = alloc_f32(c), *var = alloc_f32(c);
    double *mean_d = alloc_f64(c), *var_d = alloc_f64(c), *y_ref = alloc_f64(d->n);
    for (size_t i = 0; i < c; i++) {
        mean[i] = (float)(d->mean[i] + 0.3 * sqrt(d->var_b[i]) * (uniform01() - 0.5));
        var[i] = (float)(d->var_b[i] * (0.8 + 0.4 * uniform01()));
        mean_d[i] = mean[i];
        var_d[i] = var[i];
    }
    float *y = alloc_f32(d->n), *y_relu = alloc_f32(d->n);
    poison_f32(y, d->n);
    poison_f32(y_relu, d->n);

    EXPECT_OK(nk_batchnorm_forward_inference(ctx, sh, d->x, y, d->gamma, d->beta, mean, var,
                                             k_eps, 0),
              "inference forward");
    ref_normalize(sh, d->x, y_ref, d->gamma, d->beta, mean_d, var_d, k_eps, 0);
    COMPARE_F32("inference y", y, y_ref, d->n, Y_ABS, Y_REL);

    EXPECT_OK(nk_batchnorm_forward_inference(ctx, sh, d->x, y_relu, d->gamma, d->beta, mean, var,
                                             k_eps, NK_BN_FUSE_RELU),
              "inference forward with NK_BN_FUSE_RELU");
    ref_normalize(sh, d->x, y_ref, d->gamma, d->beta, mean_d, var_d, k_eps, 1);
    COMPARE_F32("inference y with fused ReLU", y_relu, y_ref, d->n, Y_ABS, Y_REL);
    {
        size_t negative = 0;
        for (size_t i = 0; i < d->n; i++) {
            negative += y_relu[i] < 0.0f || isnan(y_relu[i]);
        }
        CHECK(negative == 0, "fused ReLU leaves no negative value (%zu found)", negative);
    }

    /* In place, with ReLU: bitwise the same as out of place. */
    {
        float *z = copy_f32(d->x, d->n);
        EXPECT_OK(nk_batchnorm_forward_inference(ctx, sh, z, z, d->gamma, d->beta, mean, var,
                                                 k_eps, NK_BN_FUSE_RELU),
                  "inference forward in place");
        CHECK(same_bytes(z, y_relu, d->n * sizeof(float)),
              "inference in place is bitwise equal to out of place");
        free(z);
    }

    /* Without gamma and beta. */
    poison_f32(y, d->n);
    EXPECT_OK(nk_batchnorm_forward_inference(ctx, sh, d->x, y, NULL, NULL, mean, var, k_eps, 0),
              "inference forward without gamma/beta");
    ref_normalize(sh, d->x, y_ref, NULL, NULL, mean_d, var_d, k_eps, 0);
    COMPARE_F32("inference y without gamma/beta", y, y_ref, d->n, Y_ABS, Y_REL);

    free(mean);
    free(var);
    free(mean_d);
    free(var_d);
    free(y_ref);
    free(y);
    free(y_relu);
}

/* Moments of one shard (rows [n0, n1) of the batch) against the reference. */
static void shard_moments(nk_context *ctx, const bn_data *d, size_t n0, size_t n1, double *mean,
                          double *m2) {
    nk_shape sh = d->shape;
    nk_shape part = make_shape(n1 - n0, sh.channels, sh.spatial, sh.layout);
    size_t stride = sh.channels * sh.spatial; /* one batch row, in either layout */
    const float *x = part.batch > 0 ? d->x + n0 * stride : NULL;
    EXPECT_OK(nk_moments(ctx, part, x, mean, m2), "nk_moments of a shard");
}

static void test_moments(nk_context *ctx, const bn_data *d, const bn_out *full) {
    nk_shape sh = d->shape;
    size_t c = d->channels;
    double *mean = alloc_f64(c), *m2 = alloc_f64(c);
    double *mean_b = alloc_f64(c), *m2_b = alloc_f64(c);
    double mean_tol = 1e-5 * d->max_sd + 1e-13 * d->max_abs_mean + 1e-300;

    /* The whole tensor. */
    EXPECT_OK(nk_moments(ctx, sh, d->x, mean, m2), "nk_moments");
    COMPARE_F64("nk_moments mean", mean, d->mean, c, mean_tol, 0.0);
    COMPARE_F64("nk_moments m2", m2, d->m2, c, 1e-300, 2e-5);

    /* Forward from this tensor's own moments equals the training forward, bit for bit. */
    {
        bn_out o = make_out(d);
        EXPECT_OK(nk_batchnorm_forward_from_moments(ctx, sh, d->x, o.y, d->gamma, d->beta,
                                                    (uint64_t)d->count, mean, m2, k_eps,
                                                    k_momentum, 0, o.rm, o.rv, o.save_mean,
                                                    o.save_invstd),
                  "forward from own moments");
        CHECK(same_out(&o, full, d),
              "nk_moments + nk_batchnorm_forward_from_moments is bitwise equal to "
              "nk_batchnorm_forward_training");
        free_out(&o);
    }

    /* Two shards split along the batch (the first is empty when batch == 1), merged both ways. */
    size_t split = sh.batch / 2;
    uint64_t count_a = (uint64_t)(split * sh.spatial);
    uint64_t count_b = (uint64_t)((sh.batch - split) * sh.spatial);
    shard_moments(ctx, d, 0, split, mean, m2);
    shard_moments(ctx, d, split, sh.batch, mean_b, m2_b);
    if (split == 0) {
        int zeros = 1;
        for (size_t i = 0; i < c; i++) {
            zeros &= mean[i] == 0.0 && m2[i] == 0.0;
        }
        CHECK(zeros, "nk_moments of an empty shard writes zeros");
    }
    {
        double *mean_ba = alloc_f64(c), *m2_ba = alloc_f64(c);
        memcpy(mean_ba, mean_b, c * sizeof(double));
        memcpy(m2_ba, m2_b, c * sizeof(double));
        EXPECT_OK(nk_moments_merge(c, count_b, mean_ba, m2_ba, count_a, mean, m2),
                  "nk_moments_merge (b + a)");
        EXPECT_OK(nk_moments_merge(c, count_a, mean, m2, count_b, mean_b, m2_b),
                  "nk_moments_merge (a + b)");
        COMPARE_F64("merged mean", mean, d->mean, c, mean_tol, 0.0);
        COMPARE_F64("merged m2", m2, d->m2, c, 1e-300, 2e-5);
        COMPARE_F64("merge order: mean a+b vs b+a", mean_ba, mean, c, 1e-12 * d->max_sd, 1e-15);
        COMPARE_F64("merge order: m2 a+b vs b+a", m2_ba, m2, c, 1e-300, 1e-12);
        free(mean_ba);
        free(m2_ba);
    }

    /* Merging an empty set changes nothing; merging into an empty set copies. */
    {
        double *mz = alloc_f64(c), *m2z = alloc_f64(c);
        double *keep_mean = alloc_f64(c), *keep_m2 = alloc_f64(c);
        memcpy(keep_mean, mean, c * sizeof(double));
        memcpy(keep_m2, m2, c * sizeof(double));
        for (size_t i = 0; i < c; i++) {
            mz[i] = 0.0;
            m2z[i] = 0.0;
        }
        EXPECT_OK(nk_moments_merge(c, count_a + count_b, mean, m2, 0, mz, m2z),
                  "nk_moments_merge with an empty b");
        CHECK(same_bytes(mean, keep_mean, c * sizeof(double)) &&
                  same_bytes(m2, keep_m2, c * sizeof(double)),
              "merging an empty set leaves a unchanged");
        EXPECT_OK(nk_moments_merge(c, 0, mz, m2z, count_a + count_b, mean, m2),
                  "nk_moments_merge into an empty a");
        COMPARE_F64("merge into empty: mean", mz, keep_mean, c, 0.0, 1e-15);
        COMPARE_F64("merge into empty: m2", m2z, keep_m2, c, 1e-300, 1e-15);
        free(mz);
        free(m2z);
        free(keep_mean);
        free(keep_m2);
    }

    /* Each shard normalized with the merged (global) moments: together, the training output. */
    {
        uint64_t total = count_a + count_b;
        size_t stride = sh.channels * sh.spatial;
        bn_out o = make_out(d);
        bn_out o2 = make_out(d);
        double *y_ref = alloc_f64(d->n);
        nk_shape part_a = make_shape(split, sh.channels, sh.spatial, sh.layout);
        nk_shape part_b = make_shape(sh.batch - split, sh.channels, sh.spatial, sh.layout);
        EXPECT_OK(nk_batchnorm_forward_from_moments(
                      ctx, part_a, split > 0 ? d->x : NULL, split > 0 ? o.y : NULL, d->gamma,
                      d->beta, total, mean, m2, k_eps, k_momentum, 0, o.rm, o.rv, o.save_mean,
                      o.save_invstd),
                  "forward from merged moments, shard a");
        EXPECT_OK(nk_batchnorm_forward_from_moments(
                      ctx, part_b, d->x + split * stride, o.y + split * stride, d->gamma,
                      d->beta, total, mean, m2, k_eps, k_momentum, 0, o2.rm, o2.rv,
                      o2.save_mean, o2.save_invstd),
                  "forward from merged moments, shard b");
        ref_normalize(sh, d->x, y_ref, d->gamma, d->beta, d->mean, d->var_b, k_eps, 0);
        COMPARE_F32("y of both shards from merged moments", o.y, y_ref, d->n, Y_ABS, Y_REL);
        check_stats(d, &o, d->mean, d->var_b, d->var_u, (double)k_momentum,
                    "from merged moments");
        size_t cb = c * sizeof(float);
        CHECK(same_bytes(o.rm, o2.rm, cb) && same_bytes(o.rv, o2.rv, cb) &&
                  same_bytes(o.save_mean, o2.save_mean, cb) &&
                  same_bytes(o.save_invstd, o2.save_invstd, cb),
              "both shards write the same running and saved statistics");

        /* A shard with no local data still writes running and saved statistics. */
        bn_out e = make_out(d);
        nk_shape empty = make_shape(0, sh.channels, sh.spatial, sh.layout);
        EXPECT_OK(nk_batchnorm_forward_from_moments(ctx, empty, NULL, NULL, d->gamma, d->beta,
                                                    total, mean, m2, k_eps, k_momentum, 0, e.rm,
                                                    e.rv, e.save_mean, e.save_invstd),
                  "forward from moments on an empty shard");
        CHECK(same_bytes(e.rm, o2.rm, cb) && same_bytes(e.rv, o2.rv, cb) &&
                  same_bytes(e.save_mean, o2.save_mean, cb) &&
                  same_bytes(e.save_invstd, o2.save_invstd, cb),
              "an empty shard writes the same running and saved statistics");

        /* In place on shard b. */
        float *z = copy_f32(d->x, d->n);
        bn_out o3 = make_out(d);
        EXPECT_OK(nk_batchnorm_forward_from_moments(
                      ctx, part_b, z + split * stride, z + split * stride, d->gamma, d->beta,
                      total, mean, m2, k_eps, k_momentum, 0, o3.rm, o3.rv, o3.save_mean,
                      o3.save_invstd),
                  "forward from moments in place");
        CHECK(same_bytes(z + split * stride, o.y + split * stride,
                         (d->n - split * stride) * sizeof(float)),
              "forward from moments in place is bitwise equal to out of place");
        free(z);
        free_out(&o3);
        free_out(&e);
        free(y_ref);
        free_out(&o);
        free_out(&o2);
    }
    free(mean);
    free(m2);
    free(mean_b);
    free(m2_b);
}

/* One shape on one context: every batch-norm operation against the reference. */
static void test_shape(nk_context *ctx, const char *ctx_name, nk_shape sh, double offset) {
    set_case("%s isa=%s %s N=%zu C=%zu S=%zu offset=%g", ctx_name, isa_name(nk_context_isa(ctx)),
             layout_name(sh.layout), sh.batch, sh.channels, sh.spatial, offset);
    bn_data d = make_data(sh, offset);
    bn_out full = make_out(&d);
    test_training(ctx, &d, &full);
    test_inference(ctx, &d);
    test_moments(ctx, &d, &full);
    free_out(&full);
    free_data(&d);
}

/* NaN in one channel stays in that channel, and other channels are unaffected. */
static void test_nan(nk_context *ctx, nk_layout layout) {
    nk_shape sh = make_shape(3, 4, 37, layout);
    set_case("NaN input isa=%s %s", isa_name(nk_context_isa(ctx)), layout_name(layout));
    bn_data d = make_data(sh, 0.0);
    bn_out o = make_out(&d);
    d.x[at(sh, 1, 2, 5)] = NAN;
    double *y_ref = alloc_f64(d.n);
    ref_moments(sh, d.x, d.mean, d.m2);
    for (size_t c = 0; c < sh.channels; c++) {
        d.var_b[c] = d.m2[c] / (double)d.count;
    }
    EXPECT_OK(nk_batchnorm_forward_training(ctx, sh, d.x, o.y, d.gamma, d.beta, k_eps,
                                            k_momentum, 0, o.rm, o.rv, o.save_mean,
                                            o.save_invstd),
              "training forward with a NaN input");
    ref_normalize(sh, d.x, y_ref, d.gamma, d.beta, d.mean, d.var_b, k_eps, 0);
    COMPARE_F32("training y with a NaN in channel 2 (NaN there, exact elsewhere)", o.y, y_ref,
                d.n, Y_ABS, Y_REL);
    CHECK(isnan(o.save_mean[2]) && isnan(o.rm[2]) && isnan(o.rv[2]),
          "the NaN reaches the statistics of its channel");
    CHECK(!isnan(o.save_mean[1]) && !isnan(o.rv[3]), "other channels' statistics are finite");
    free(y_ref);
    free_out(&o);
    free_data(&d);
}

/* nk_batchnorm_fold against the reference, and as a layer: folded(u) == BN(layer(u)). */
static void test_fold(void) {
    set_case("fold");
    const size_t c_out = 5, fan_in = 7;
    float w[5 * 7], bias[5], gamma[5], beta[5], mean[5], var[5];
    double want_w[5 * 7], want_b[5];
    for (size_t o = 0; o < c_out; o++) {
        for (size_t i = 0; i < fan_in; i++) {
            w[o * fan_in + i] = (float)normal01();
        }
        bias[o] = (float)normal01();
        gamma[o] = (float)(0.5 + uniform01());
        beta[o] = (float)normal01();
        mean[o] = (float)normal01();
        var[o] = (float)(0.1 + uniform01());
    }
    float w0[5 * 7], b0[5];
    memcpy(w0, w, sizeof w);
    memcpy(b0, bias, sizeof bias);
    for (size_t o = 0; o < c_out; o++) {
        double scale = gamma[o] / sqrt((double)var[o] + (double)k_eps);
        for (size_t i = 0; i < fan_in; i++) {
            want_w[o * fan_in + i] = w0[o * fan_in + i] * scale;
        }
        want_b[o] = (b0[o] - (double)mean[o]) * scale + beta[o];
    }
    EXPECT_OK(nk_batchnorm_fold(c_out, fan_in, w, bias, gamma, beta, mean, var, k_eps),
              "nk_batchnorm_fold");
    COMPARE_F32("folded weight", w, want_w, c_out * fan_in, 1e-7, 1e-6);
    COMPARE_F32("folded bias", bias, want_b, c_out, 1e-6, 1e-6);

    /* The folded layer computes layer-then-BN on an input vector. */
    {
        double u[7], layer_bn[5], folded[5];
        for (size_t i = 0; i < fan_in; i++) {
            u[i] = normal01();
        }
        for (size_t o = 0; o < c_out; o++) {
            double a = b0[o], f = bias[o];
            for (size_t i = 0; i < fan_in; i++) {
                a += w0[o * fan_in + i] * u[i];
                f += w[o * fan_in + i] * u[i];
            }
            layer_bn[o] = gamma[o] * (a - mean[o]) / sqrt((double)var[o] + (double)k_eps) + beta[o];
            folded[o] = f;
        }
        COMPARE_F64("folded layer equals layer then batch norm", folded, layer_bn, c_out, 1e-5,
                    1e-5);
    }

    /* Without gamma and beta. */
    memcpy(w, w0, sizeof w);
    memcpy(bias, b0, sizeof bias);
    for (size_t o = 0; o < c_out; o++) {
        double scale = 1.0 / sqrt((double)var[o] + (double)k_eps);
        for (size_t i = 0; i < fan_in; i++) {
            want_w[o * fan_in + i] = w0[o * fan_in + i] * scale;
        }
        want_b[o] = (b0[o] - (double)mean[o]) * scale;
    }
    EXPECT_OK(nk_batchnorm_fold(c_out, fan_in, w, bias, NULL, NULL, mean, var, k_eps),
              "nk_batchnorm_fold without gamma/beta");
    COMPARE_F32("folded weight without gamma/beta", w, want_w, c_out * fan_in, 1e-7, 1e-6);
    COMPARE_F32("folded bias without gamma/beta", bias, want_b, c_out, 1e-6, 1e-6);
}

/* Bitwise identical results whatever the thread count: 1, 2 and 3 threads, and the default
 * context (all logical cores) where it uses the same ISA. */
static void test_determinism(nk_isa isa, nk_context *ctx2) {
    nk_context *ctx1 = NULL, *ctx3 = NULL;
    EXPECT_OK(nk_context_create(1, &ctx1), "nk_context_create(1)");
    EXPECT_OK(nk_context_create(3, &ctx3), "nk_context_create(3)");
    if (ctx1 == NULL || ctx3 == NULL) {
        return;
    }
    EXPECT_OK(nk_context_set_isa(ctx1, isa), "set_isa on the 1-thread context");
    EXPECT_OK(nk_context_set_isa(ctx3, isa), "set_isa on the 3-thread context");
    nk_context *ctxs[4] = {ctx1, ctx2, ctx3, NULL};
    size_t n_ctx = nk_context_isa(NULL) == isa ? 4 : 3;
    static const size_t shapes[][3] = {{16, 8, 3000}, {2, 3, 150000}, {4000, 24, 1}};
    for (int l = 0; l < 2; l++) {
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            nk_layout layout = l == 0 ? NK_LAYOUT_NCS : NK_LAYOUT_NSC;
            nk_shape sh = make_shape(shapes[k][0], shapes[k][1], shapes[k][2], layout);
            set_case("determinism isa=%s %s N=%zu C=%zu S=%zu", isa_name(isa),
                     layout_name(layout), sh.batch, sh.channels, sh.spatial);
            bn_data d = make_data(sh, 3.0);
            bn_out first = make_out(&d);
            double *mean1 = alloc_f64(d.channels), *m21 = alloc_f64(d.channels);
            double *mean = alloc_f64(d.channels), *m2 = alloc_f64(d.channels);
            float *yi1 = alloc_f32(d.n), *yi = alloc_f32(d.n);
            float *var = alloc_f32(d.channels), *mu = alloc_f32(d.channels);
            for (size_t c = 0; c < d.channels; c++) {
                mu[c] = (float)d.mean[c];
                var[c] = (float)d.var_b[c];
            }
            for (size_t i = 0; i < n_ctx; i++) {
                bn_out o = make_out(&d);
                nk_context *ctx = ctxs[i];
                EXPECT_OK(nk_batchnorm_forward_training(ctx, sh, d.x, o.y, d.gamma, d.beta, k_eps,
                                                        k_momentum, 0, o.rm, o.rv, o.save_mean,
                                                        o.save_invstd),
                          "training forward");
                EXPECT_OK(nk_moments(ctx, sh, d.x, i == 0 ? mean1 : mean, i == 0 ? m21 : m2),
                          "nk_moments");
                EXPECT_OK(nk_batchnorm_forward_inference(ctx, sh, d.x, i == 0 ? yi1 : yi, d.gamma,
                                                         d.beta, mu, var, k_eps, NK_BN_FUSE_RELU),
                          "inference forward");
                if (i == 0) {
                    double *y_ref = alloc_f64(d.n);
                    ref_normalize(sh, d.x, y_ref, d.gamma, d.beta, d.mean, d.var_b, k_eps, 0);
                    COMPARE_F32("training y (1 thread)", o.y, y_ref, d.n, Y_ABS, Y_REL);
                    free(y_ref);
                    free_out(&first);
                    first = o;
                    continue;
                }
                const char *who = ctx == NULL ? "default context" : i == 1 ? "2 threads"
                                                                            : "3 threads";
                CHECK(same_out(&o, &first, &d),
                      "training forward on %s is bitwise equal to 1 thread", who);
                CHECK(same_bytes(mean, mean1, d.channels * sizeof(double)) &&
                          same_bytes(m2, m21, d.channels * sizeof(double)),
                      "nk_moments on %s is bitwise equal to 1 thread", who);
                CHECK(same_bytes(yi, yi1, d.n * sizeof(float)),
                      "inference forward on %s is bitwise equal to 1 thread", who);
                free_out(&o);
            }
            free(mean1);
            free(m21);
            free(mean);
            free(m2);
            free(yi1);
            free(yi);
            free(var);
            free(mu);
            free_out(&first);
            free_data(&d);
        }
    }
    nk_context_destroy(ctx1);
    nk_context_destroy(ctx3);
}

/* Executor contexts (nk_context_create_with_executor): a serial executor that runs each batch
 * on the calling thread in reverse order, counting its calls and checking the contract's promises
 * (called from the thread that made the normkit call, never from inside a task). */
typedef struct {
    size_t calls, tasks;
    int in_task, reentered, other_thread;
    pthread_t caller;
} serial_executor;

static void reverse_parallel_for(void *user, size_t count, nk_task_fn task, void *task_arg) {
    serial_executor *e = (serial_executor *)user;
    e->calls++;
    e->tasks += count;
    e->reentered |= e->in_task;
    e->other_thread |= !pthread_equal(pthread_self(), e->caller);
    e->in_task = 1;
    for (size_t i = count; i-- > 0;) {
        task(task_arg, i);
    }
    e->in_task = 0;
}

static void test_executor_errors(void) {
    set_case("executor context errors");
    serial_executor state;
    memset(&state, 0, sizeof state);
    state.caller = pthread_self();
    nk_executor ex;
    ex.parallel_for = reverse_parallel_for;
    ex.user = &state;
    ex.concurrency = 1;
    static int sentinel_target;
    nk_context *const sentinel = (nk_context *)(void *)&sentinel_target;
    nk_context *out = sentinel;
    EXPECT_STATUS(nk_context_create_with_executor(NULL, &out), NK_ERR_NULL_POINTER,
                  "nk_context_create_with_executor(executor NULL)");
    CHECK(out == sentinel, "executor NULL: nothing written to *out");
    EXPECT_STATUS(nk_context_create_with_executor(&ex, NULL), NK_ERR_NULL_POINTER,
                  "nk_context_create_with_executor(out NULL)");
    nk_executor no_fn = ex;
    no_fn.parallel_for = NULL;
    EXPECT_STATUS(nk_context_create_with_executor(&no_fn, &out), NK_ERR_NULL_POINTER,
                  "nk_context_create_with_executor(parallel_for NULL)");
    CHECK(out == sentinel, "parallel_for NULL: nothing written to *out");
    nk_executor zero = ex;
    zero.concurrency = 0;
    EXPECT_STATUS(nk_context_create_with_executor(&zero, &out), NK_ERR_BAD_ARGUMENT,
                  "nk_context_create_with_executor(concurrency 0)");
    CHECK(out == sentinel, "concurrency 0: nothing written to *out");
    CHECK(state.calls == 0, "no parallel_for call during failed creations");
}

/* The executor context computes bitwise what the 2-thread context `ctx2` computes, on the ISA
 * of ctx2; the executor struct is copied at creation (changing it afterwards changes nothing). */
static void test_executor_context(nk_isa isa, nk_context *ctx2) {
    serial_executor state;
    memset(&state, 0, sizeof state);
    state.caller = pthread_self();
    nk_executor ex;
    ex.parallel_for = reverse_parallel_for;
    ex.user = &state;
    ex.concurrency = 3; /* a claim only: results must not depend on it */
    nk_context *exec = NULL;
    set_case("executor context isa=%s", isa_name(isa));
    EXPECT_OK(nk_context_create_with_executor(&ex, &exec), "nk_context_create_with_executor");
    if (exec == NULL) {
        return;
    }
    ex.parallel_for = NULL; /* the context holds its own copy */
    ex.concurrency = 0;
    EXPECT_OK(nk_context_set_isa(exec, isa), "nk_context_set_isa on an executor context");
    CHECK(nk_context_isa(exec) == isa, "the executor context uses %s", isa_name(isa));
    static const size_t shapes[][3] = {{16, 8, 3000}, {2, 3, 150000}, {4000, 24, 1}};
    for (int l = 0; l < 2; l++) {
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            nk_layout layout = l == 0 ? NK_LAYOUT_NCS : NK_LAYOUT_NSC;
            nk_shape sh = make_shape(shapes[k][0], shapes[k][1], shapes[k][2], layout);
            set_case("executor context isa=%s %s N=%zu C=%zu S=%zu", isa_name(isa),
                     layout_name(layout), sh.batch, sh.channels, sh.spatial);
            bn_data d = make_data(sh, 3.0);
            bn_out want = make_out(&d), got = make_out(&d);
            double *mean = alloc_f64(2 * d.channels), *m2 = alloc_f64(2 * d.channels);
            nk_context *ctxs[2] = {ctx2, exec};
            bn_out *outs[2] = {&want, &got};
            for (int i = 0; i < 2; i++) {
                EXPECT_OK(nk_batchnorm_forward_training(ctxs[i], sh, d.x, outs[i]->y, d.gamma,
                                                        d.beta, k_eps, k_momentum, 0,
                                                        outs[i]->rm, outs[i]->rv,
                                                        outs[i]->save_mean, outs[i]->save_invstd),
                          "training forward");
                EXPECT_OK(nk_moments(ctxs[i], sh, d.x, mean + i * d.channels,
                                     m2 + i * d.channels),
                          "nk_moments");
            }
            CHECK(same_out(&got, &want, &d),
                  "training forward on the executor context is bitwise that of 2 threads");
            CHECK(same_bytes(mean, mean + d.channels, d.channels * sizeof(double)) &&
                      same_bytes(m2, m2 + d.channels, d.channels * sizeof(double)),
                  "nk_moments on the executor context is bitwise that of 2 threads");
            free(mean);
            free(m2);
            free_out(&want);
            free_out(&got);
            free_data(&d);
        }
    }
    set_case("executor context isa=%s", isa_name(isa));
    CHECK(state.calls > 0 && state.tasks >= state.calls,
          "large calls went through parallel_for (%zu calls, %zu tasks)", state.calls,
          state.tasks);
    CHECK(!state.reentered, "parallel_for is never called from inside a task");
    CHECK(!state.other_thread, "parallel_for is called from the thread that made the call");
    nk_context_destroy(exec);
}

/* Calls from several threads at once, on one shared context and on the default context, give
 * the same bits as a call alone; each thread sees its own last error message. */
typedef struct {
    nk_context *ctx;
    const bn_data *d;
    const bn_out *want;
    int index;
    int mismatches;
    int error_checks_failed;
} worker_arg;

static void *concurrent_worker(void *p) {
    worker_arg *a = (worker_arg *)p;
    const bn_data *d = a->d;
    bn_out o = make_out(d);
    for (int iter = 0; iter < 12; iter++) {
        nk_context *ctx = iter % 2 == 0 ? a->ctx : NULL;
        memcpy(o.rm, d->rm0, d->channels * sizeof(float));
        memcpy(o.rv, d->rv0, d->channels * sizeof(float));
        poison_f32(o.y, d->n);
        nk_status s = nk_batchnorm_forward_training(ctx, d->shape, d->x, o.y, d->gamma, d->beta,
                                                    k_eps, k_momentum, 0, o.rm, o.rv, o.save_mean,
                                                    o.save_invstd);
        if (s != NK_OK || !same_out(&o, a->want, d)) {
            a->mismatches++;
        }
        /* A failing call sets this thread's message, whatever the others do: half the threads
         * pass a bad eps, the other half a bad momentum, and each message names its parameter. */
        int bad_eps = a->index % 2 == 0;
        s = nk_batchnorm_forward_training(ctx, d->shape, d->x, o.y, d->gamma, d->beta,
                                          bad_eps ? -1.0f : k_eps, bad_eps ? k_momentum : 2.0f, 0,
                                          o.rm, o.rv, NULL, NULL);
        const char *msg = nk_last_error_message();
        if (s != NK_ERR_BAD_ARGUMENT || msg == NULL ||
            strstr(msg, bad_eps ? "eps" : "momentum") == NULL) {
            a->error_checks_failed++;
        }
    }
    free_out(&o);
    return NULL;
}

static void test_concurrency(nk_context *ctx) {
    enum { THREADS = 4 };
    EXPECT_OK(nk_context_set_isa(ctx, NK_ISA_AUTO), "set_isa(AUTO) before the concurrency test");
    for (int l = 0; l < 2; l++) {
        nk_layout layout = l == 0 ? NK_LAYOUT_NCS : NK_LAYOUT_NSC;
        nk_shape sh = make_shape(8, 16, 4096, layout);
        set_case("concurrent calls isa=%s %s", isa_name(nk_context_isa(ctx)), layout_name(layout));
        bn_data d = make_data(sh, 2.0);
        bn_out want = make_out(&d);
        EXPECT_OK(nk_batchnorm_forward_training(ctx, sh, d.x, want.y, d.gamma, d.beta, k_eps,
                                                k_momentum, 0, want.rm, want.rv, want.save_mean,
                                                want.save_invstd),
                  "training forward alone");
        pthread_t threads[THREADS];
        worker_arg args[THREADS];
        int started = 0;
        for (int t = 0; t < THREADS; t++) {
            args[t].ctx = ctx;
            args[t].d = &d;
            args[t].want = &want;
            args[t].index = t;
            args[t].mismatches = 0;
            args[t].error_checks_failed = 0;
            if (pthread_create(&threads[t], NULL, concurrent_worker, &args[t]) == 0) {
                started++;
            } else {
                break;
            }
        }
        CHECK(started == THREADS, "started %d of %d threads", started, (int)THREADS);
        for (int t = 0; t < started; t++) {
            pthread_join(threads[t], NULL);
            CHECK(args[t].mismatches == 0,
                  "thread %d: %d concurrent training calls differ from the call alone", t,
                  args[t].mismatches);
            CHECK(args[t].error_checks_failed == 0,
                  "thread %d: %d failed calls did not leave this thread's own error message", t,
                  args[t].error_checks_failed);
        }
        free_out(&want);
        free_data(&d);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The error contract                                                                           */

/* Every buffer of the error cases lives in one arena, so "nothing written" is one comparison of
 * the whole arena (inputs included) with a snapshot taken before the call. */
#define ARENA_F32 512
#define ARENA_F64 128
static float *g_af;
static double *g_ad;
static float g_af_snap[ARENA_F32];
static double g_ad_snap[ARENA_F64];

static void arena_fill(void) {
    for (size_t i = 0; i < ARENA_F32; i++) {
        g_af[i] = (float)(0.5 + uniform01());
    }
    for (size_t i = 0; i < ARENA_F64; i++) {
        g_ad[i] = 0.5 + uniform01();
    }
}

static void arena_snapshot(void) {
    memcpy(g_af_snap, g_af, sizeof g_af_snap);
    memcpy(g_ad_snap, g_ad, sizeof g_ad_snap);
}

static void expect_error_at(nk_status got, nk_status want, int line, const char *what) {
    expect_status_at(got, want, line, what);
    check_at(same_bytes(g_af, g_af_snap, sizeof g_af_snap) &&
                 same_bytes(g_ad, g_ad_snap, sizeof g_ad_snap),
             line, "%s: buffers changed although the call failed", what);
    arena_fill(); /* in case the call wrongly succeeded and wrote */
}

/* Runs `call` and expects status `want` with every buffer left byte-for-byte unchanged. */
#define EXPECT_ERROR(call, want, what)                         \
    do {                                                       \
        arena_snapshot();                                      \
        nk_status status_ = (call);                            \
        expect_error_at(status_, (want), __LINE__, (what));    \
    } while (0)

/* Pointers 1 byte (float) and 4 bytes (double) past `p`: deliberately misaligned. */
static float *misalign_f32(float *p) { return (float *)(void *)((char *)p + 1); }
static double *misalign_f64(double *p) { return (double *)(void *)((char *)p + 4); }

static void test_errors(nk_context *ctx) {
    set_case("error contract (%s)", ctx ? "2-thread context" : "default context");
    g_af = alloc_f32(ARENA_F32);
    g_ad = alloc_f64(ARENA_F64);
    arena_fill();

    /* N=2, C=4, S=3: 24 elements. */
    nk_shape sh = make_shape(2, 4, 3, NK_LAYOUT_NCS);
    nk_shape one = make_shape(1, 4, 1, NK_LAYOUT_NSC); /* count 1 per channel */
    nk_shape huge = make_shape(SIZE_MAX / 2, 4, 3, NK_LAYOUT_NCS);
    float *x = g_af, *y = g_af + 32, *gamma = g_af + 64, *beta = g_af + 72;
    float *rm = g_af + 80, *rv = g_af + 88, *sm = g_af + 96, *si = g_af + 104;
    float *mu = g_af + 112, *var = g_af + 120;
    double *dm = g_ad, *dm2 = g_ad + 8, *dmb = g_ad + 16, *dm2b = g_ad + 24;
    const float eps = 1e-5f, mom = 0.1f, nan = NAN, inf = INFINITY;

    /* ---- training ---- */
#define TRAIN(shape_, x_, y_, g_, b_, eps_, mom_, flags_, rm_, rv_, sm_, si_) \
    nk_batchnorm_forward_training(ctx, shape_, x_, y_, g_, b_, eps_, mom_, flags_, rm_, rv_, sm_, si_)
    EXPECT_ERROR(TRAIN(sh, NULL, y, gamma, beta, eps, mom, 0, rm, rv, sm, si), NK_ERR_NULL_POINTER,
                 "training: x NULL");
    EXPECT_ERROR(TRAIN(sh, x, NULL, gamma, beta, eps, mom, 0, rm, rv, sm, si), NK_ERR_NULL_POINTER,
                 "training: y NULL");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, mom, 0, rm, NULL, sm, si), NK_ERR_NULL_POINTER,
                 "training: running_var NULL with running_mean given");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, mom, 0, NULL, rv, sm, si), NK_ERR_NULL_POINTER,
                 "training: running_mean NULL with running_var given");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, -1e-3f, mom, 0, rm, rv, sm, si), NK_ERR_BAD_ARGUMENT,
                 "training: eps < 0");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, nan, mom, 0, rm, rv, sm, si), NK_ERR_BAD_ARGUMENT,
                 "training: eps NaN");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, inf, mom, 0, rm, rv, sm, si), NK_ERR_BAD_ARGUMENT,
                 "training: eps inf");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, 1.5f, 0, rm, rv, sm, si), NK_ERR_BAD_ARGUMENT,
                 "training: momentum > 1");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, -0.1f, 0, rm, rv, sm, si), NK_ERR_BAD_ARGUMENT,
                 "training: momentum < 0");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, nan, 0, rm, rv, sm, si), NK_ERR_BAD_ARGUMENT,
                 "training: momentum NaN");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, 1.5f, 0, NULL, NULL, sm, si),
                 NK_ERR_BAD_ARGUMENT, "training: momentum > 1 without running statistics");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, mom, NK_BN_FUSE_RELU, rm, rv, sm, si),
                 NK_ERR_BAD_ARGUMENT, "training: NK_BN_FUSE_RELU is inference only");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, mom, 0x100, rm, rv, sm, si), NK_ERR_BAD_ARGUMENT,
                 "training: unknown flag bit");
#ifndef __cplusplus
    {
        nk_shape bad = sh;
        bad.layout = (nk_layout)2;
        EXPECT_ERROR(TRAIN(bad, x, y, gamma, beta, eps, mom, 0, rm, rv, sm, si),
                     NK_ERR_BAD_ARGUMENT, "training: unknown layout");
    }
#endif
    EXPECT_ERROR(TRAIN(one, x, y, gamma, beta, eps, mom, 0, rm, rv, sm, si), NK_ERR_BAD_SHAPE,
                 "training: count 1 with an unbiased running variance");
    EXPECT_ERROR(TRAIN(make_shape(0, 4, 3, NK_LAYOUT_NCS), NULL, NULL, gamma, beta, eps, mom, 0,
                       NULL, NULL, sm, si),
                 NK_ERR_BAD_SHAPE, "training: batch 0 (count 0)");
    EXPECT_ERROR(TRAIN(huge, x, y, gamma, beta, eps, mom, 0, rm, rv, sm, si), NK_ERR_OVERFLOW,
                 "training: N*C*S overflows size_t");
    EXPECT_ERROR(TRAIN(sh, misalign_f32(x), y, gamma, beta, eps, mom, 0, rm, rv, sm, si),
                 NK_ERR_MISALIGNED, "training: x misaligned");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, mom, 0, rm, rv, misalign_f32(sm), si),
                 NK_ERR_MISALIGNED, "training: save_mean misaligned");
    EXPECT_ERROR(TRAIN(sh, x, x + 1, gamma, beta, eps, mom, 0, rm, rv, sm, si), NK_ERR_ALIAS,
                 "training: y overlaps x without being equal");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, mom, 0, rm, rv, rm, si), NK_ERR_ALIAS,
                 "training: save_mean == running_mean");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, mom, 0, rm, rv, sm, sm), NK_ERR_ALIAS,
                 "training: save_mean == save_invstd");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, mom, 0, rm, rv, gamma, si), NK_ERR_ALIAS,
                 "training: save_mean == gamma (an output over an input)");
    EXPECT_ERROR(TRAIN(sh, x, y, gamma, beta, eps, mom, 0, y + 20, rv, sm, si), NK_ERR_ALIAS,
                 "training: running_mean overlaps y");
    /* Precedence: NULL > OVERFLOW > BAD_SHAPE > BAD_ARGUMENT > MISALIGNED > ALIAS. */
    EXPECT_ERROR(TRAIN(huge, NULL, y, gamma, beta, -1.0f, mom, 0, rm, rv, sm, si),
                 NK_ERR_NULL_POINTER, "training precedence: NULL before overflow and argument");
    EXPECT_ERROR(TRAIN(huge, x, y, gamma, beta, -1.0f, mom, 0, rm, rv, sm, si), NK_ERR_OVERFLOW,
                 "training precedence: overflow before argument");
    EXPECT_ERROR(TRAIN(one, x, y, gamma, beta, -1.0f, 2.0f, 0, rm, rv, sm, si), NK_ERR_BAD_SHAPE,
                 "training precedence: shape before argument");
    EXPECT_ERROR(TRAIN(sh, misalign_f32(x), x, gamma, beta, -1.0f, mom, 0, rm, rv, sm, si),
                 NK_ERR_BAD_ARGUMENT, "training precedence: argument before misaligned and alias");
    EXPECT_ERROR(TRAIN(sh, misalign_f32(x), x + 1, gamma, beta, eps, mom, 0, rm, rv, sm, si),
                 NK_ERR_MISALIGNED, "training precedence: misaligned before alias");
    /* Allowed: inputs may overlap each other; count 1 with the biased running variance; no data
     * when there are no channels. */
    EXPECT_OK(TRAIN(sh, x, y, gamma, gamma, eps, mom, 0, rm, rv, sm, si),
              "training: gamma == beta (two inputs may overlap)");
    arena_fill();
    {
        float rv_before[4];
        memcpy(rv_before, rv, sizeof rv_before);
        EXPECT_OK(TRAIN(one, x, y, gamma, beta, eps, mom, NK_BN_RUNNING_VAR_BIASED, rm, rv, sm,
                        si),
                  "training: count 1 with NK_BN_RUNNING_VAR_BIASED");
        int ok = 1;
        for (size_t c = 0; c < 4; c++) {
            double want_rv = (1.0 - (double)mom) * rv_before[c];
            ok &= fabs(y[c] - beta[c]) <= 1e-6 && fabs(rv[c] - want_rv) <= 1e-6 * want_rv;
        }
        CHECK(ok, "count 1: y = beta and the biased batch variance is 0");
    }
    arena_fill();
    arena_snapshot();
    EXPECT_OK(TRAIN(make_shape(2, 0, 3, NK_LAYOUT_NCS), NULL, NULL, NULL, NULL, eps, mom, 0, NULL,
                    NULL, NULL, NULL),
              "training: C = 0 with NULL pointers");
    CHECK(same_bytes(g_af, g_af_snap, sizeof g_af_snap), "training with C = 0 writes nothing");
#undef TRAIN

    /* ---- inference ---- */
#define INFER(shape_, x_, y_, g_, b_, m_, v_, eps_, flags_) \
    nk_batchnorm_forward_inference(ctx, shape_, x_, y_, g_, b_, m_, v_, eps_, flags_)
    EXPECT_ERROR(INFER(sh, NULL, y, gamma, beta, mu, var, eps, 0), NK_ERR_NULL_POINTER,
                 "inference: x NULL");
    EXPECT_ERROR(INFER(sh, x, NULL, gamma, beta, mu, var, eps, 0), NK_ERR_NULL_POINTER,
                 "inference: y NULL");
    EXPECT_ERROR(INFER(sh, x, y, gamma, beta, NULL, var, eps, 0), NK_ERR_NULL_POINTER,
                 "inference: mean NULL");
    EXPECT_ERROR(INFER(sh, x, y, gamma, beta, mu, NULL, eps, 0), NK_ERR_NULL_POINTER,
                 "inference: var NULL");
    EXPECT_ERROR(INFER(sh, x, y, gamma, beta, mu, var, -1.0f, 0), NK_ERR_BAD_ARGUMENT,
                 "inference: eps < 0");
    EXPECT_ERROR(INFER(sh, x, y, gamma, beta, mu, var, eps, NK_BN_RUNNING_VAR_BIASED),
                 NK_ERR_BAD_ARGUMENT, "inference: NK_BN_RUNNING_VAR_BIASED is training only");
    EXPECT_ERROR(INFER(huge, x, y, gamma, beta, mu, var, eps, 0), NK_ERR_OVERFLOW,
                 "inference: N*C*S overflows size_t");
    EXPECT_ERROR(INFER(sh, x, y, gamma, beta, mu, misalign_f32(var), eps, 0), NK_ERR_MISALIGNED,
                 "inference: var misaligned");
    EXPECT_ERROR(INFER(sh, x, mu - 4, gamma, beta, mu, var, eps, 0), NK_ERR_ALIAS,
                 "inference: y overlaps mean");
    EXPECT_ERROR(INFER(sh, x, x + 3, gamma, beta, mu, var, eps, 0), NK_ERR_ALIAS,
                 "inference: y overlaps x without being equal");
    arena_snapshot();
    EXPECT_OK(INFER(make_shape(0, 4, 3, NK_LAYOUT_NSC), NULL, NULL, gamma, beta, mu, var, eps, 0),
              "inference: batch 0 with NULL data");
    CHECK(same_bytes(g_af, g_af_snap, sizeof g_af_snap), "inference with no data writes nothing");
    EXPECT_ERROR(INFER(make_shape(0, 4, 3, NK_LAYOUT_NSC), NULL, NULL, gamma, beta, mu, var, -1.0f,
                       0),
                 NK_ERR_BAD_ARGUMENT, "inference: eps checked even with no data");
#undef INFER

    /* ---- moments ---- */
    EXPECT_ERROR(nk_moments(ctx, sh, NULL, dm, dm2), NK_ERR_NULL_POINTER, "moments: x NULL");
    EXPECT_ERROR(nk_moments(ctx, sh, x, NULL, dm2), NK_ERR_NULL_POINTER, "moments: mean NULL");
    EXPECT_ERROR(nk_moments(ctx, sh, x, dm, NULL), NK_ERR_NULL_POINTER, "moments: m2 NULL");
    EXPECT_ERROR(nk_moments(ctx, huge, x, dm, dm2), NK_ERR_OVERFLOW, "moments: overflow");
    EXPECT_ERROR(nk_moments(ctx, sh, x, misalign_f64(dm), dm2), NK_ERR_MISALIGNED,
                 "moments: mean misaligned (4-byte aligned double)");
    EXPECT_ERROR(nk_moments(ctx, sh, x, dm, dm), NK_ERR_ALIAS, "moments: mean == m2");
    EXPECT_ERROR(nk_moments(ctx, sh, x, dm, dm + 2), NK_ERR_ALIAS, "moments: mean overlaps m2");
    EXPECT_ERROR(nk_moments(ctx, sh, (const float *)(const void *)dm2, dm, dm2), NK_ERR_ALIAS,
                 "moments: m2 overlaps x");
#ifndef __cplusplus
    {
        nk_shape bad = sh;
        bad.layout = (nk_layout)7;
        EXPECT_ERROR(nk_moments(ctx, bad, x, dm, dm2), NK_ERR_BAD_ARGUMENT,
                     "moments: unknown layout");
    }
#endif
    EXPECT_OK(nk_moments(ctx, make_shape(0, 4, 3, NK_LAYOUT_NCS), NULL, dm, dm2),
              "moments: empty shard");
    CHECK(dm[0] == 0.0 && dm[3] == 0.0 && dm2[0] == 0.0 && dm2[3] == 0.0,
          "moments of an empty shard are zeros");
    arena_fill();

    /* ---- merge ---- */
    EXPECT_ERROR(nk_moments_merge(4, 3, NULL, dm2, 5, dmb, dm2b), NK_ERR_NULL_POINTER,
                 "merge: mean_a NULL");
    EXPECT_ERROR(nk_moments_merge(4, 3, dm, NULL, 5, dmb, dm2b), NK_ERR_NULL_POINTER,
                 "merge: m2_a NULL");
    EXPECT_ERROR(nk_moments_merge(4, 3, dm, dm2, 5, NULL, dm2b), NK_ERR_NULL_POINTER,
                 "merge: mean_b NULL");
    EXPECT_ERROR(nk_moments_merge(4, 3, dm, dm2, 5, dmb, NULL), NK_ERR_NULL_POINTER,
                 "merge: m2_b NULL");
    EXPECT_ERROR(nk_moments_merge(4, UINT64_MAX, dm, dm2, 1, dmb, dm2b), NK_ERR_OVERFLOW,
                 "merge: count_a + count_b overflows uint64");
    EXPECT_ERROR(nk_moments_merge(4, 3, dm, dm2, 5, dm, dm2b), NK_ERR_ALIAS,
                 "merge: mean_b == mean_a");
    EXPECT_ERROR(nk_moments_merge(4, 3, dm, dm2, 5, dmb, dm + 2), NK_ERR_ALIAS,
                 "merge: m2_b overlaps mean_a");
    EXPECT_ERROR(nk_moments_merge(4, 3, dm, dm, 5, dmb, dm2b), NK_ERR_ALIAS,
                 "merge: mean_a == m2_a");
    EXPECT_ERROR(nk_moments_merge(4, 3, misalign_f64(dm), dm2, 5, dmb, dm2b), NK_ERR_MISALIGNED,
                 "merge: mean_a misaligned");
    EXPECT_ERROR(nk_moments_merge(4, 3, misalign_f64(dm), dm2, 5, dm2, dm2b), NK_ERR_MISALIGNED,
                 "merge precedence: misaligned before alias");
    EXPECT_ERROR(nk_moments_merge(4, UINT64_MAX, NULL, dm2, 1, dmb, dm2b), NK_ERR_NULL_POINTER,
                 "merge precedence: NULL before overflow");
    arena_snapshot();
    EXPECT_OK(nk_moments_merge(0, 3, NULL, NULL, 5, NULL, NULL), "merge: 0 channels, NULLs");
    CHECK(same_bytes(g_ad, g_ad_snap, sizeof g_ad_snap), "merge of 0 channels writes nothing");
    {
        /* A small merge by hand: {1, 2, 3} (+) {4, 5} = {1, .., 5}. */
        double ma = 2.0, m2a = 2.0, mb = 4.5, m2b = 0.5;
        EXPECT_OK(nk_moments_merge(1, 3, &ma, &m2a, 2, &mb, &m2b), "merge of {1,2,3} and {4,5}");
        CHECK(fabs(ma - 3.0) <= 1e-15 && fabs(m2a - 10.0) <= 1e-14,
              "merge of {1,2,3} and {4,5}: mean %.17g (want 3), m2 %.17g (want 10)", ma, m2a);
    }

    /* ---- forward from moments ---- */
#define FROM(shape_, x_, y_, count_, m_, m2_, eps_, mom_, flags_, rm_, rv_, sm_, si_)            \
    nk_batchnorm_forward_from_moments(ctx, shape_, x_, y_, gamma, beta, count_, m_, m2_, eps_, \
                                      mom_, flags_, rm_, rv_, sm_, si_)
    EXPECT_ERROR(FROM(sh, x, y, 6, NULL, dm2, eps, mom, 0, rm, rv, sm, si), NK_ERR_NULL_POINTER,
                 "from moments: mean NULL");
    EXPECT_ERROR(FROM(sh, x, y, 6, dm, NULL, eps, mom, 0, rm, rv, sm, si), NK_ERR_NULL_POINTER,
                 "from moments: m2 NULL");
    EXPECT_ERROR(FROM(sh, NULL, y, 6, dm, dm2, eps, mom, 0, rm, rv, sm, si), NK_ERR_NULL_POINTER,
                 "from moments: x NULL");
    EXPECT_ERROR(FROM(sh, x, y, 6, dm, dm2, eps, mom, 0, rm, NULL, sm, si), NK_ERR_NULL_POINTER,
                 "from moments: running_var NULL with running_mean given");
    EXPECT_ERROR(FROM(sh, x, y, 0, dm, dm2, eps, mom, 0, NULL, NULL, sm, si), NK_ERR_BAD_SHAPE,
                 "from moments: global count 0");
    EXPECT_ERROR(FROM(sh, x, y, 1, dm, dm2, eps, mom, 0, rm, rv, sm, si), NK_ERR_BAD_SHAPE,
                 "from moments: count 1 with an unbiased running variance");
    EXPECT_ERROR(FROM(sh, x, y, 6, dm, dm2, -1.0f, mom, 0, rm, rv, sm, si), NK_ERR_BAD_ARGUMENT,
                 "from moments: eps < 0");
    EXPECT_ERROR(FROM(sh, x, y, 6, dm, dm2, eps, 2.0f, 0, rm, rv, sm, si), NK_ERR_BAD_ARGUMENT,
                 "from moments: momentum > 1");
    EXPECT_ERROR(FROM(sh, x, y, 6, dm, dm2, eps, mom, NK_BN_FUSE_RELU, rm, rv, sm, si),
                 NK_ERR_BAD_ARGUMENT, "from moments: NK_BN_FUSE_RELU is inference only");
    EXPECT_ERROR(FROM(sh, x, y, 6, misalign_f64(dm), dm2, eps, mom, 0, rm, rv, sm, si),
                 NK_ERR_MISALIGNED, "from moments: mean misaligned");
    EXPECT_ERROR(FROM(sh, x, y, 6, dm, dm2, eps, mom, 0, rm, rv, sm, y + 10), NK_ERR_ALIAS,
                 "from moments: save_invstd overlaps y");
    EXPECT_ERROR(FROM(huge, x, y, 6, dm, dm2, eps, mom, 0, rm, rv, sm, si), NK_ERR_OVERFLOW,
                 "from moments: overflow");
    EXPECT_ERROR(FROM(make_shape(0, 4, 3, NK_LAYOUT_NCS), NULL, NULL, 0, dm, dm2, eps, mom, 0, rm,
                      rv, sm, si),
                 NK_ERR_BAD_SHAPE, "from moments: empty shard with global count 0");
#undef FROM

    /* ---- fold ---- */
    {
        float *w = g_af + 200, *b = g_af + 240;
        EXPECT_ERROR(nk_batchnorm_fold(4, 6, NULL, b, gamma, beta, mu, var, eps),
                     NK_ERR_NULL_POINTER, "fold: weight NULL");
        EXPECT_ERROR(nk_batchnorm_fold(4, 6, w, NULL, gamma, beta, mu, var, eps),
                     NK_ERR_NULL_POINTER, "fold: bias NULL");
        EXPECT_ERROR(nk_batchnorm_fold(4, 6, w, b, gamma, beta, NULL, var, eps),
                     NK_ERR_NULL_POINTER, "fold: mean NULL");
        EXPECT_ERROR(nk_batchnorm_fold(4, 6, w, b, gamma, beta, mu, NULL, eps),
                     NK_ERR_NULL_POINTER, "fold: var NULL");
        EXPECT_ERROR(nk_batchnorm_fold(4, 6, w, b, gamma, beta, mu, var, -1.0f),
                     NK_ERR_BAD_ARGUMENT, "fold: eps < 0");
        EXPECT_ERROR(nk_batchnorm_fold(4, 6, w, b, gamma, beta, mu, var, nan),
                     NK_ERR_BAD_ARGUMENT, "fold: eps NaN");
        EXPECT_ERROR(nk_batchnorm_fold(SIZE_MAX / 2, 6, w, b, gamma, beta, mu, var, eps),
                     NK_ERR_OVERFLOW, "fold: c_out * fan_in overflows");
        EXPECT_ERROR(nk_batchnorm_fold(4, 6, w, w + 20, gamma, beta, mu, var, eps), NK_ERR_ALIAS,
                     "fold: bias overlaps weight");
        EXPECT_ERROR(nk_batchnorm_fold(4, 6, w, gamma, gamma, beta, mu, var, eps), NK_ERR_ALIAS,
                     "fold: bias == gamma");
        EXPECT_ERROR(nk_batchnorm_fold(4, 6, misalign_f32(w), b, gamma, beta, mu, var, eps),
                     NK_ERR_MISALIGNED, "fold: weight misaligned");
        arena_snapshot();
        EXPECT_OK(nk_batchnorm_fold(0, 6, NULL, NULL, NULL, NULL, NULL, NULL, eps),
                  "fold: c_out 0 with NULLs");
        CHECK(same_bytes(g_af, g_af_snap, sizeof g_af_snap), "fold of 0 channels writes nothing");
        EXPECT_ERROR(nk_batchnorm_fold(0, 6, NULL, NULL, NULL, NULL, NULL, NULL, -1.0f),
                     NK_ERR_BAD_ARGUMENT, "fold: eps checked even with no channels");
    }

    free(g_af);
    free(g_ad);
}

/* ------------------------------------------------------------------------------------------ */

int main(void) {
    test_library();
    test_context_lifecycle();

    nk_context *ctx = NULL;
    EXPECT_OK(nk_context_create(2, &ctx), "nk_context_create(2)");
    if (ctx == NULL) {
        fprintf(stderr, "cannot create a context; stopping\n");
        return 1;
    }
    nk_isa isas[8];
    size_t n_isas = test_context_isas(ctx, isas);
    printf("ISAs on this CPU:");
    for (size_t i = 0; i < n_isas; i++) {
        printf(" %s", isa_name(isas[i]));
    }
    printf("; default context uses %s\n", isa_name(nk_context_isa(NULL)));

    test_errors(ctx);
    test_errors(NULL);
    test_executor_errors();
    test_fold();

    /* (batch, channels, spatial): tiny, odd, spatial = 1, more than 256 channels, channels
     * longer than one 2^18-element chunk, and large enough to run on several threads. */
    static const size_t shapes[][3] = {{1, 1, 1},    {2, 3, 1},     {1, 5, 9},   {3, 5, 7},
                                       {4, 17, 33},  {64, 300, 1},  {7, 3, 129}, {2, 2, 140000},
                                       {16, 32, 1000}};
    const size_t n_shapes = sizeof shapes / sizeof shapes[0];
    for (size_t i = 0; i < n_isas; i++) {
        EXPECT_OK(nk_context_set_isa(ctx, isas[i]), "nk_context_set_isa");
        for (int l = 0; l < 2; l++) {
            nk_layout layout = l == 0 ? NK_LAYOUT_NCS : NK_LAYOUT_NSC;
            for (size_t k = 0; k < n_shapes; k++) {
                nk_shape sh = make_shape(shapes[k][0], shapes[k][1], shapes[k][2], layout);
                if (sh.batch * sh.spatial < 2) {
                    continue; /* the default unbiased running variance needs count >= 2 */
                }
                test_shape(ctx, "2 threads", sh, 1.0);
            }
            /* A large offset: accuracy must not depend on it. */
            test_shape(ctx, "2 threads", make_shape(4, 3, 1000, layout), 10000.0);
            test_shape(ctx, "2 threads", make_shape(3, 2, 40000, layout), 10000.0);
            test_nan(ctx, layout);
        }
        test_determinism(isas[i], ctx);
        test_executor_context(isas[i], ctx);
    }
    test_concurrency(ctx);
    /* The default context. */
    for (int l = 0; l < 2; l++) {
        nk_layout layout = l == 0 ? NK_LAYOUT_NCS : NK_LAYOUT_NSC;
        test_shape(NULL, "default context", make_shape(3, 5, 7, layout), 1.0);
        test_shape(NULL, "default context", make_shape(16, 32, 1000, layout), 1.0);
    }
    nk_context_destroy(ctx);

    printf("%d checks, %d failed; largest error/tolerance ratio among passing comparisons: %.3g "
           "(%s)\n",
           g_checks, g_failures, g_worst_ratio, g_worst_what);
    if (g_failures > 0) {
        fprintf(stderr, "%d of %d checks FAILED\n", g_failures, g_checks);
        return 1;
    }
    return 0;
}
