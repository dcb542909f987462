/*
 * A short tour of normkit from C: batch-normalize an activation tensor of a ResNet-sized layer
 * (32 x 64 x 56 x 56, NCHW and NHWC), in training mode and in inference mode, check every output
 * against a plain double-precision loop, and time each call next to a memcpy of the same bytes.
 *
 * Build and run with `examples/tour.sh`, or by hand from the repository root:
 *   cargo build --release
 *   cc -O2 -std=c11 -Iinclude examples/tour.c target/release/libnormkit.a \
 *      $(cat packaging/static-libs.txt) -o tour
 *   ./tour            # the best ISA of this CPU
 *   ./tour portable   # or force one: portable, avx2, avx512
 *
 * Throughput counts the minimal traffic of a call, reading x once and writing y once (2 * 4 bytes
 * per element); the memcpy line moves the same bytes (reads and writes 4 bytes per element).
 */
#define _POSIX_C_SOURCE 200809L

#include "normkit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { N = 32, C = 64, H = 56, W = 56, RUNS = 15 };

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof t[0], by_value);
    return t[n / 2];
}

static void *checked_malloc(size_t bytes) {
    void *p = malloc(bytes);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static void fail(const char *what, nk_status s) {
    fprintf(stderr, "%s failed: %s (%s)\n", what, nk_status_string(s), nk_last_error_message());
    exit(1);
}

static const char *isa_name(nk_isa isa) {
    switch (isa) {
    case NK_ISA_AUTO: return "auto";
    case NK_ISA_PORTABLE: return "portable";
    case NK_ISA_AVX2: return "avx2";
    case NK_ISA_AVX512: return "avx512";
    case NK_ISA_NEON: return "neon";
    }
    return "?";
}

/* Index of element (n, c, s) in either layout. */
static size_t at(nk_layout layout, size_t n, size_t c, size_t s) {
    return layout == NK_LAYOUT_NCS ? (n * C + c) * (H * W) + s : (n * (H * W) + s) * C + c;
}

/* The largest |y - ref| / (1e-5 + 1e-5 |ref|) over the tensor, with ref computed in double from
 * the given statistics (mean_in/var_in NULL: the batch statistics of x). */
static double worst_error(nk_layout layout, const float *x, const float *y, const float *gamma,
                          const float *beta, const float *mean_in, const float *var_in,
                          float eps, int relu) {
    const size_t count = (size_t)N * H * W;
    double worst = 0.0;
    for (size_t c = 0; c < C; c++) {
        double mean, var;
        if (mean_in != NULL) {
            mean = mean_in[c];
            var = var_in[c];
        } else {
            double sum = 0.0, dev = 0.0;
            for (size_t n = 0; n < N; n++) {
                for (size_t s = 0; s < H * W; s++) {
                    sum += x[at(layout, n, c, s)];
                }
            }
            mean = sum / (double)count;
            for (size_t n = 0; n < N; n++) {
                for (size_t s = 0; s < H * W; s++) {
                    double d = x[at(layout, n, c, s)] - mean;
                    dev += d * d;
                }
            }
            var = dev / (double)count; /* biased, as batch norm normalizes */
        }
        double invstd = 1.0 / sqrt(var + (double)eps);
        for (size_t n = 0; n < N; n++) {
            for (size_t s = 0; s < H * W; s++) {
                size_t i = at(layout, n, c, s);
                double ref = gamma[c] * (x[i] - mean) * invstd + beta[c];
                if (relu && ref < 0.0) {
                    ref = 0.0;
                }
                double e = fabs(y[i] - ref) / (1e-5 + 1e-5 * fabs(ref));
                if (!(e <= worst)) {
                    worst = e; /* NaN propagates as "worst" */
                }
            }
        }
    }
    return worst;
}

int main(int argc, char **argv) {
    const size_t elements = (size_t)N * C * H * W;
    const size_t bytes = elements * sizeof(float);
    const float eps = 1e-5f, momentum = 0.1f;

    nk_context *ctx = NULL;
    nk_status s = nk_context_create(0, &ctx); /* 0: all logical cores */
    if (s != NK_OK) {
        fail("nk_context_create", s);
    }
    if (argc > 1) {
        nk_isa isa = NK_ISA_AUTO;
        if (strcmp(argv[1], "portable") == 0) isa = NK_ISA_PORTABLE;
        else if (strcmp(argv[1], "avx2") == 0) isa = NK_ISA_AVX2;
        else if (strcmp(argv[1], "avx512") == 0) isa = NK_ISA_AVX512;
        else if (strcmp(argv[1], "neon") == 0) isa = NK_ISA_NEON;
        else if (strcmp(argv[1], "auto") != 0) {
            fprintf(stderr, "usage: %s [auto|portable|avx2|avx512|neon]\n", argv[0]);
            return 2;
        }
        s = nk_context_set_isa(ctx, isa);
        if (s != NK_OK) {
            fail("nk_context_set_isa", s);
        }
    }
    uint32_t v = nk_version();
    printf("normkit %u.%u.%u, ISA %s, all logical cores\n", v >> 16, (v >> 8) & 0xff, v & 0xff,
           isa_name(nk_context_isa(ctx)));
    printf("tensor %dx%dx%dx%d floats (%.1f MB), median of %d runs; GB/s = (read x + write y) / "
           "time\n\n",
           N, C, H, W, (double)bytes / 1e6, RUNS);
    printf("%-36s %11s %12s %16s\n", "", "time", "throughput", "speed vs memcpy");

    float *x = (float *)checked_malloc(bytes);
    float *y = (float *)checked_malloc(bytes);
    float gamma[C], beta[C], running_mean[C], running_var[C], save_mean[C], save_invstd[C];
    unsigned long long r = 88172645463325252ull;
    for (size_t c = 0; c < C; c++) {
        gamma[c] = 0.5f + (float)(c % 5) * 0.25f;
        beta[c] = 0.1f * (float)(c % 3) - 0.1f;
        running_mean[c] = 0.0f;
        running_var[c] = 1.0f;
    }
    int ok = 1;
    double copy_time = 0.0;
    for (int pass = 0; pass < 2; pass++) {
        nk_layout layout = pass == 0 ? NK_LAYOUT_NCS : NK_LAYOUT_NSC;
        nk_shape shape;
        shape.batch = N;
        shape.channels = C;
        shape.spatial = H * W;
        shape.layout = layout;
        /* Activations: a per-channel offset plus noise (sum of uniforms, roughly normal). */
        for (size_t n = 0; n < N; n++) {
            for (size_t c = 0; c < C; c++) {
                for (size_t sp = 0; sp < H * W; sp++) {
                    double u = 0.0;
                    for (int k = 0; k < 4; k++) {
                        r ^= r << 13;
                        r ^= r >> 7;
                        r ^= r << 17;
                        u += (double)(r >> 11) / 9007199254740992.0;
                    }
                    x[at(layout, n, c, sp)] = (float)(0.5 * (double)c + 2.0 * (u - 2.0));
                }
            }
        }
        memset(y, 0, bytes);

        double t[RUNS];
        if (pass == 0) {
            for (int i = 0; i < RUNS; i++) {
                double t0 = now_seconds();
                memcpy(y, x, bytes);
                t[i] = now_seconds() - t0;
            }
            copy_time = median(t, RUNS);
            if (memcmp(x, y, bytes) != 0) {
                return 1;
            }
            printf("%-36s %8.3f ms %7.1f GB/s %14.2f\n", "memcpy (one thread)", copy_time * 1e3,
                   2.0 * (double)bytes / copy_time / 1e9, 1.0);
        }

        /* Training forward: batch statistics, normalize, update running statistics, save the
         * mean and inverse std for a backward pass. */
        for (int i = 0; i < RUNS; i++) {
            double t0 = now_seconds();
            s = nk_batchnorm_forward_training(ctx, shape, x, y, gamma, beta, eps, momentum, 0,
                                              running_mean, running_var, save_mean, save_invstd);
            t[i] = now_seconds() - t0;
            if (s != NK_OK) {
                fail("nk_batchnorm_forward_training", s);
            }
        }
        double tt = median(t, RUNS);
        double e_train = worst_error(layout, x, y, gamma, beta, NULL, NULL, eps, 0);
        char label[64];
        snprintf(label, sizeof label, "training forward (%s)", pass == 0 ? "NCHW" : "NHWC");
        printf("%-36s %8.3f ms %7.1f GB/s %14.2f\n", label, tt * 1e3,
               2.0 * (double)bytes / tt / 1e9, copy_time / tt);

        /* Inference forward with the running statistics, ReLU fused. */
        for (int i = 0; i < RUNS; i++) {
            double t0 = now_seconds();
            s = nk_batchnorm_forward_inference(ctx, shape, x, y, gamma, beta, running_mean,
                                               running_var, eps, NK_BN_FUSE_RELU);
            t[i] = now_seconds() - t0;
            if (s != NK_OK) {
                fail("nk_batchnorm_forward_inference", s);
            }
        }
        double ti = median(t, RUNS);
        double e_infer = worst_error(layout, x, y, gamma, beta, running_mean, running_var, eps, 1);
        snprintf(label, sizeof label, "inference forward + ReLU (%s)",
                 pass == 0 ? "NCHW" : "NHWC");
        printf("%-36s %8.3f ms %7.1f GB/s %14.2f\n", label, ti * 1e3,
               2.0 * (double)bytes / ti / 1e9, copy_time / ti);
        printf("    check against a double-precision loop: worst error %.3f (training), %.3f "
               "(inference) of the tolerance 1e-5 + 1e-5 |y|\n",
               e_train, e_infer);
        ok &= e_train <= 1.0 && e_infer <= 1.0;
    }
    nk_context_destroy(ctx);
    free(x);
    free(y);
    printf("\n%s\n", ok ? "all outputs match the reference" : "MISMATCH against the reference");
    return ok ? 0 : 1;
}
