// The "engine situation": normkit called from a process whose OpenMP team runs short parallel
// regions between calls (OpenMP threads keep spinning for a while after each region).
//
//   engine omp   ROUNDS TARGET_MS [FILTER]   modes (a), (b) and a plain copy, in one process
//   engine alone ROUNDS TARGET_MS [FILTER]   mode (c): never enters an OpenMP region
//
//   (a) a normkit context with its own (rayon) threads, nk_context_create(T)
//   (b) an executor context whose parallel_for is `#pragma omp parallel for` on T threads
//   (c) normkit alone: nk_context_create(T) in a process where no OpenMP region ever runs
//   copy: memcpy of half the workload's minimal traffic (one read + one write of the same
//         bytes), split over T OpenMP threads, measured like (b)
//
// Every timed call follows a short region of about tens of microseconds (OpenMP `parallel for`
// over a small array in `omp`; the same loop on the calling thread in `alone`); only the
// normkit call (or the copy) is timed, with clock_gettime(CLOCK_MONOTONIC). A measurement is
// the median of REPS such calls, REPS picked once per (workload, T) so that a measurement takes
// about TARGET_MS. Each of ROUNDS rounds measures every (workload, T) once per mode; (a) and
// (b) alternate, their order swapped every round. Before timing, the outputs of (a) and (b)
// are compared bitwise (abort on mismatch) and a hash of them is printed, so that the report
// can check (c) against them.
//
// Output: one JSON object per line on stdout:
//   {"kind":"info", ...}  the tiny region's duration, the OpenMP schedule of (b)
//   {"kind":"hash","mode","workload","T","hash"}
//   {"kind":"time","mode","workload","T","round","ms","reps","bytes"}
// The OpenMP schedule of (b) is `schedule(runtime)`: static unless OMP_SCHEDULE says otherwise.
#define _POSIX_C_SOURCE 200809L
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "normkit.h"

enum kind { BN_TRAIN, BN_INFER, LAYERNORM, GROUPNORM, DROPOUT };

typedef struct {
    const char *name;
    enum kind kind;
    nk_shape shape;  // BN, GN
    size_t rows, cols;  // LN
    size_t groups;  // GN
    size_t n;  // elements
    size_t stats;  // length of the saved statistics
    double bytes;  // minimal traffic: every input and output touched once
} workload;

typedef struct {
    float *y, *save_mean, *save_invstd, *running_mean, *running_var;
    uint8_t *mask;
} outputs;

static workload g_wl[6];
static int g_nwl;
static float *g_x, *g_gamma, *g_beta, *g_mean, *g_var;
static outputs g_out[2];
static const float EPS = 1e-5f, MOMENTUM = 0.1f, P = 0.1f;

static void die(const char *what, nk_status s) {
    fprintf(stderr, "engine: %s: %s (%s)\n", what, nk_status_string(s), nk_last_error_message());
    exit(1);
}

static void *xalloc(size_t bytes) {
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "engine: out of memory\n");
        exit(1);
    }
    memset(p, 0, bytes);  // fault the pages in before timing
    return p;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void add_shape(const char *name, enum kind k, size_t b, size_t c, size_t s, nk_layout l,
                      size_t groups) {
    workload w = {0};
    w.name = name;
    w.kind = k;
    w.shape = (nk_shape){b, c, s, l};
    w.groups = groups;
    w.n = b * c * s;
    w.stats = k == GROUPNORM ? b * groups : c;
    w.bytes = 2.0 * 4.0 * (double)w.n;
    g_wl[g_nwl++] = w;
}

static void setup_workloads(void) {
    add_shape("bn_train_nchw", BN_TRAIN, 32, 64, 56 * 56, NK_LAYOUT_NCS, 0);
    add_shape("bn_train_nhwc", BN_TRAIN, 32, 64, 56 * 56, NK_LAYOUT_NSC, 0);
    add_shape("bn_infer_nchw", BN_INFER, 32, 64, 56 * 56, NK_LAYOUT_NCS, 0);
    workload ln = {.name = "layernorm", .kind = LAYERNORM, .rows = 8192, .cols = 768};
    ln.n = ln.rows * ln.cols;
    ln.stats = ln.rows;
    ln.bytes = 2.0 * 4.0 * (double)ln.n;
    g_wl[g_nwl++] = ln;
    add_shape("groupnorm", GROUPNORM, 8, 256, 32 * 32, NK_LAYOUT_NCS, 32);
    workload d = {.name = "dropout", .kind = DROPOUT, .n = (size_t)16 << 20};
    d.bytes = 2.0 * 4.0 * (double)d.n + (double)((d.n + 7) / 8);
    g_wl[g_nwl++] = d;
}

static void setup_buffers(void) {
    size_t nmax = 0, smax = 0;
    for (int i = 0; i < g_nwl; i++) {
        if (g_wl[i].n > nmax) nmax = g_wl[i].n;
        if (g_wl[i].stats > smax) smax = g_wl[i].stats;
    }
    g_x = xalloc(nmax * 4);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < nmax; i++) {  // 0.5 + uniform [-1, 1)
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        g_x[i] = 0.5f + (float)((double)(s >> 40) * 0x1p-23 - 1.0);
    }
    g_gamma = xalloc(smax * 4), g_beta = xalloc(smax * 4);
    g_mean = xalloc(smax * 4), g_var = xalloc(smax * 4);
    for (size_t c = 0; c < smax; c++) {
        g_gamma[c] = 1.0f + 0.01f * (float)(c % 7);
        g_beta[c] = 0.1f * (float)(c % 5);
        g_mean[c] = 0.5f, g_var[c] = 0.33f;
    }
    for (int k = 0; k < 2; k++) {
        outputs *o = &g_out[k];
        o->y = xalloc(nmax * 4);
        o->save_mean = xalloc(smax * 4), o->save_invstd = xalloc(smax * 4);
        o->running_mean = xalloc(smax * 4), o->running_var = xalloc(smax * 4);
        o->mask = xalloc((nmax + 7) / 8);
    }
}

static nk_status run(const workload *w, nk_context *ctx, const outputs *o) {
    switch (w->kind) {
    case BN_TRAIN:
        return nk_batchnorm_forward_training(ctx, w->shape, g_x, o->y, g_gamma, g_beta, EPS,
                                             MOMENTUM, 0, o->running_mean, o->running_var,
                                             o->save_mean, o->save_invstd);
    case BN_INFER:
        return nk_batchnorm_forward_inference(ctx, w->shape, g_x, o->y, g_gamma, g_beta, g_mean,
                                              g_var, EPS, 0);
    case LAYERNORM:
        return nk_layernorm_forward(ctx, w->rows, w->cols, g_x, o->y, g_gamma, g_beta, EPS,
                                    o->save_mean, o->save_invstd);
    case GROUPNORM:
        return nk_groupnorm_forward(ctx, w->shape, w->groups, g_x, o->y, g_gamma, g_beta, EPS,
                                    o->save_mean, o->save_invstd);
    case DROPOUT:
        return nk_dropout_forward(ctx, w->n, g_x, o->y, P, 1234, 0, o->mask);
    }
    return NK_ERR_BAD_ARGUMENT;
}

// Running statistics back to their initial values, so that two calls can be compared.
static void reset_running(const workload *w, const outputs *o) {
    for (size_t c = 0; c < w->stats; c++) o->running_mean[c] = 0.0f, o->running_var[c] = 1.0f;
}

static uint64_t fnv(uint64_t h, const void *p, size_t bytes) {
    const unsigned char *b = p;
    for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}

// A hash of every output of one call (y hashed by 64-bit words to keep it quick).
static uint64_t hash_outputs(const workload *w, const outputs *o) {
    uint64_t h = 0xCBF29CE484222325ull;
    const uint64_t *y = (const uint64_t *)o->y;
    for (size_t i = 0; i < w->n / 2; i++) h = (h ^ y[i]) * 0x100000001B3ull;
    h = fnv(h, o->y + w->n / 2 * 2, (w->n % 2) * 4);
    if (w->kind != BN_INFER && w->kind != DROPOUT) {
        h = fnv(h, o->save_mean, w->stats * 4);
        h = fnv(h, o->save_invstd, w->stats * 4);
    }
    if (w->kind == BN_TRAIN) {
        h = fnv(h, o->running_mean, w->stats * 4);
        h = fnv(h, o->running_var, w->stats * 4);
    }
    if (w->kind == DROPOUT) h = fnv(h, o->mask, (w->n + 7) / 8);
    return h;
}

// ---- the short region between calls ----

// 32 blocks of 256 floats (32 KiB), each swept SMALL_PASSES times: some 20-40 us on one core
// (the same compiled block in both modes).
enum { SMALL_BLOCK = 256, SMALL_BLOCKS = 32, SMALL_PASSES = 32 };
static float g_small[SMALL_BLOCK * SMALL_BLOCKS];

__attribute__((noinline)) static void small_block(int b) {
    float *v = g_small + (size_t)b * SMALL_BLOCK;
    for (int k = 0; k < SMALL_PASSES; k++)
        for (int i = 0; i < SMALL_BLOCK; i++) v[i] = v[i] * 0.9999f + 0.0001f;
}

static void small_region_omp(void) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < SMALL_BLOCKS; b++) small_block(b);
}

static void small_region_serial(void) {
    for (int b = 0; b < SMALL_BLOCKS; b++) small_block(b);
}

// ---- (b): the host's executor is OpenMP ----

static void omp_parallel_for(void *user, size_t count, nk_task_fn task, void *task_arg) {
    int threads = *(const int *)user;
    if (count == 1) {
        task(task_arg, 0);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(runtime)
    for (long i = 0; i < (long)count; i++) task(task_arg, (size_t)i);
}

// ---- the copy ----

static void copy_omp(int threads, size_t bytes) {
    char *dst = (char *)g_out[0].y;
    const char *src = (const char *)g_x;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; t++) {
        size_t lo = bytes * (size_t)t / (size_t)threads / 64 * 64;
        size_t hi = t + 1 == threads ? bytes : bytes * (size_t)(t + 1) / (size_t)threads / 64 * 64;
        memcpy(dst + lo, src + lo, hi - lo);
    }
}

// ---- measurement ----

enum mode { MODE_A, MODE_B, MODE_C, MODE_COPY };
static const char *const MODE_NAME[] = {"a", "b", "c", "copy"};

typedef struct {
    int omp;  // 1: the region is OpenMP; 0: no OpenMP region ever runs
    nk_context *ctx_own[3];  // index T
    nk_context *ctx_exec[3];
    int exec_threads[3];
} env;

// One timed step: the short region, then the timed operation. Returns seconds.
static double step(const env *e, const workload *w, enum mode m, int t) {
    if (e->omp)
        small_region_omp();
    else
        small_region_serial();
    double t0 = now_s();
    nk_status s = NK_OK;
    switch (m) {
    case MODE_A:
    case MODE_C:
        s = run(w, e->ctx_own[t], &g_out[0]);
        break;
    case MODE_B:
        s = run(w, e->ctx_exec[t], &g_out[1]);
        break;
    case MODE_COPY:
        copy_omp(t, (size_t)(w->bytes / 2));
        break;
    }
    double t1 = now_s();
    if (s != NK_OK) die(w->name, s);
    return t1 - t0;
}

static double g_samples[100000];

static double measure(const env *e, const workload *w, enum mode m, int t, int reps) {
    for (int i = 0; i < 2; i++) step(e, w, m, t);  // warm up
    for (int i = 0; i < reps; i++) g_samples[i] = step(e, w, m, t);
    return median(g_samples, reps);
}

static void check_and_hash(const env *e, const workload *w, int t) {
    reset_running(w, &g_out[0]);
    nk_status s = run(w, e->ctx_own[t], &g_out[0]);
    if (s != NK_OK) die(w->name, s);
    uint64_t ha = hash_outputs(w, &g_out[0]);
    printf("{\"kind\":\"hash\",\"mode\":\"%s\",\"workload\":\"%s\",\"T\":%d,\"hash\":\"%016llx\"}\n",
           e->omp ? "a" : "c", w->name, t, (unsigned long long)ha);
    if (!e->omp) return;
    reset_running(w, &g_out[1]);
    memset(g_out[1].y, 0xff, w->n * 4);
    s = run(w, e->ctx_exec[t], &g_out[1]);
    if (s != NK_OK) die(w->name, s);
    uint64_t hb = hash_outputs(w, &g_out[1]);
    int same = memcmp(g_out[0].y, g_out[1].y, w->n * 4) == 0;
    if (w->kind == DROPOUT) same = same && memcmp(g_out[0].mask, g_out[1].mask, (w->n + 7) / 8) == 0;
    if (w->kind != BN_INFER && w->kind != DROPOUT)
        same = same && memcmp(g_out[0].save_mean, g_out[1].save_mean, w->stats * 4) == 0 &&
               memcmp(g_out[0].save_invstd, g_out[1].save_invstd, w->stats * 4) == 0;
    if (w->kind == BN_TRAIN)
        same = same && memcmp(g_out[0].running_mean, g_out[1].running_mean, w->stats * 4) == 0 &&
               memcmp(g_out[0].running_var, g_out[1].running_var, w->stats * 4) == 0;
    if (!same || ha != hb) {
        fprintf(stderr, "engine: %s T=%d: outputs of (a) and (b) differ\n", w->name, t);
        abort();
    }
    printf("{\"kind\":\"hash\",\"mode\":\"b\",\"workload\":\"%s\",\"T\":%d,\"hash\":\"%016llx\"}\n",
           w->name, t, (unsigned long long)hb);
}

int main(int argc, char **argv) {
    if (argc < 4 || (strcmp(argv[1], "omp") && strcmp(argv[1], "alone"))) {
        fprintf(stderr, "usage: %s omp|alone ROUNDS TARGET_MS [FILTER]\n", argv[0]);
        return 2;
    }
    env e = {0};
    e.omp = strcmp(argv[1], "omp") == 0;
    int rounds = atoi(argv[2]);
    double target = atof(argv[3]) * 1e-3;
    const char *filter = argc > 4 ? argv[4] : "";
    if (rounds < 1 || !(target > 0)) {
        fprintf(stderr, "engine: bad ROUNDS or TARGET_MS\n");
        return 2;
    }
    setup_workloads();
    setup_buffers();
    for (int i = 0; i < SMALL_BLOCK * SMALL_BLOCKS; i++) g_small[i] = (float)i;

    enum { TMIN = 1, TMAX = 2 };
    for (int t = TMIN; t <= TMAX; t++) {
        nk_status s = nk_context_create((size_t)t, &e.ctx_own[t]);
        if (s != NK_OK) die("nk_context_create", s);
        if (e.omp) {
            e.exec_threads[t] = t;
            nk_executor ex = {omp_parallel_for, &e.exec_threads[t], (size_t)t};
            s = nk_context_create_with_executor(&ex, &e.ctx_exec[t]);
            if (s != NK_OK) die("nk_context_create_with_executor", s);
        }
    }
    if (e.omp) {
        if (!getenv("OMP_SCHEDULE")) omp_set_schedule(omp_sched_static, 0);
        omp_sched_t kind;
        int chunk;
        omp_get_schedule(&kind, &chunk);
        const char *names[] = {"?", "static", "dynamic", "guided", "auto"};
        printf("{\"kind\":\"info\",\"schedule\":\"%s\",\"chunk\":%d}\n",
               names[(kind & 0x7fffffff) <= 4 ? (kind & 0x7fffffff) : 0], chunk);
    }
    printf("{\"kind\":\"info\",\"isa\":%d}\n", (int)nk_context_isa(e.ctx_own[1]));

    // The short region's own duration, for the report.
    for (int t = TMIN; t <= TMAX; t++) {
        if (e.omp) omp_set_num_threads(t);
        int n = 2000;
        for (int i = 0; i < n; i++) {
            double t0 = now_s();
            e.omp ? small_region_omp() : small_region_serial();
            g_samples[i] = now_s() - t0;
        }
        printf("{\"kind\":\"info\",\"mode\":\"%s\",\"T\":%d,\"region_us\":%.1f}\n",
               e.omp ? "omp" : "alone", t, 1e6 * median(g_samples, n));
        if (!e.omp) break;  // the serial region does not depend on T
    }

    // Check outputs and pick the repetitions of each (workload, T).
    int reps[6][TMAX + 1];
    for (int i = 0; i < g_nwl; i++) {
        const workload *w = &g_wl[i];
        if (!strstr(w->name, filter)) continue;
        for (int t = TMIN; t <= TMAX; t++) {
            if (e.omp) omp_set_num_threads(t);
            check_and_hash(&e, w, t);
            enum mode m = e.omp ? MODE_B : MODE_C;
            double best = 1e30;
            for (int k = 0; k < 3; k++) {
                double d = step(&e, w, m, t);
                if (d < best) best = d;
            }
            int r = (int)(target / best);
            reps[i][t] = r < 5 ? 5 : r > 10000 ? 10000 : r;
        }
    }
    fflush(stdout);

    for (int round = 0; round < rounds; round++) {
        for (int i = 0; i < g_nwl; i++) {
            const workload *w = &g_wl[i];
            if (!strstr(w->name, filter)) continue;
            for (int t = TMIN; t <= TMAX; t++) {
                enum mode order[3];
                int nm = 0;
                if (e.omp) {
                    omp_set_num_threads(t);
                    order[nm++] = round % 2 ? MODE_B : MODE_A;
                    order[nm++] = round % 2 ? MODE_A : MODE_B;
                    order[nm++] = MODE_COPY;
                } else {
                    order[nm++] = MODE_C;
                }
                for (int k = 0; k < nm; k++) {
                    double med = measure(&e, w, order[k], t, reps[i][t]);
                    printf("{\"kind\":\"time\",\"mode\":\"%s\",\"workload\":\"%s\",\"T\":%d,"
                           "\"round\":%d,\"ms\":%.6f,\"reps\":%d,\"bytes\":%.0f}\n",
                           MODE_NAME[order[k]], w->name, t, round, 1e3 * med, reps[i][t],
                           w->bytes);
                }
                fflush(stdout);
            }
        }
    }
    // Threads of the process (evidence that `alone` never started an OpenMP team).
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "Threads:", 8) == 0)
            printf("{\"kind\":\"info\",\"mode\":\"%s\",\"threads\":%d}\n",
                   e.omp ? "omp" : "alone", atoi(line + 8));
    if (f) fclose(f);
    for (int t = TMIN; t <= TMAX; t++) {
        nk_context_destroy(e.ctx_own[t]);
        nk_context_destroy(e.ctx_exec[t]);
    }
    return 0;
}
