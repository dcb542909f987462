/* Benchmark: normkit's ggml ops (normkit_ggml.c) against ggml's own CPU ops, both run by ggml's
 * thread pool (ggml_graph_compute with a persistent ggml_threadpool, as llama.cpp runs graphs),
 * at 1 and 2 threads, on model shapes, in f32 and bf16 (ggml: cast to f32, norm, cast back).
 *
 * Usage: bench [rounds]   (default 31)
 *
 * Each configuration times three one-node-or-few graphs in interleaved rounds (the order rotates
 * every round): ggml's op, normkit's op, and ggml's copy of as many bytes as the op moves (its
 * inputs read and outputs written once), which is the memory bound. Each round runs a graph
 * enough times to take about 10 ms; the table gives medians over rounds, in microseconds per call.
 * The machine may be shared: medians, not minima, are reported.
 */
#include "harness.h"
#include "normkit.h"
#include "normkit_ggml.h"


typedef struct {
    const char *name;
    op_kind op;
    int64_t ne[4];
    int groups;
} workload;

static const workload workloads[] = {
    {"RMS norm (512,4096)", OP_RMS, {4096, 512, 1, 1}, 0},
    {"RMS norm (1,4096) decode", OP_RMS, {4096, 1, 1, 1}, 0},
    {"layer norm (512,768)", OP_LAYER, {768, 512, 1, 1}, 0},
    {"group norm (1,320,64,64)/32", OP_GROUP, {64, 64, 320, 1}, 32},
    {"add + RMS norm (512,4096)", OP_ADD_RMS, {4096, 512, 1, 1}, 0},
};

static double now_us(void) {
    return (double)ggml_time_us();
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, compare_doubles);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Median microseconds per run of each of n graphs, timed in interleaved rounds. */
static void time_graphs(struct ggml_cgraph **graphs, int n, int nth, int rounds, double *out) {
    int reps[8];
    double *samples = malloc(sizeof(double) * (size_t)(n * rounds));
    for (int g = 0; g < n; g++) { /* warm up, then size the batches to about 10 ms */
        compute(graphs[g], nth);
        double t0 = now_us();
        int k = 0;
        do {
            compute(graphs[g], nth);
            k++;
        } while (now_us() - t0 < 10000.0 && k < 100000);
        double per = (now_us() - t0) / k;
        reps[g] = per >= 10000.0 ? 1 : (int)(10000.0 / per);
    }
    for (int r = 0; r < rounds; r++) {
        for (int j = 0; j < n; j++) {
            int g = (j + r) % n;
            double t0 = now_us();
            for (int k = 0; k < reps[g]; k++) {
                compute(graphs[g], nth);
            }
            samples[g * rounds + r] = (now_us() - t0) / reps[g];
        }
    }
    for (int g = 0; g < n; g++) {
        out[g] = median(samples + g * rounds, rounds);
    }
    free(samples);
}

static struct ggml_cgraph *graph_of(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b) {
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, a);
    if (b != NULL) {
        ggml_build_forward_expand(gf, b);
    }
    return gf;
}

static int below_target;

static void bench_workload(const workload *w, enum ggml_type type, int nth, int rounds) {
    const int64_t *ne = w->ne;
    int64_t count = ne[0] * ne[1] * ne[2] * ne[3];
    size_t es = ggml_type_size(type);
    struct ggml_context *ctx = new_context((size_t)count * 4 * 16 + (64u << 20));
    struct ggml_tensor *x = ggml_new_tensor_4d(ctx, type, ne[0], ne[1], ne[2], ne[3]);
    fill(x, 0);
    struct ggml_tensor *res = NULL;
    if (w->op == OP_ADD_RMS) {
        res = ggml_new_tensor_4d(ctx, type, ne[0], ne[1], ne[2], ne[3]);
        fill(res, 0);
    }
    float eps = w->op == OP_LAYER || w->op == OP_GROUP ? 1e-5f : 1e-6f;

    /* ggml: its op (f32 only: bf16 is cast before and after); the fused add is ggml_add (which
     * takes bf16 directly) then the norm */
    struct ggml_tensor *g_sum;
    struct ggml_tensor *g = ggml_side(ctx, w->op, x, res, w->groups, eps, &g_sum);
    g = to_type(ctx, g, type);

    struct ggml_tensor *n_sum = NULL;
    struct ggml_tensor *n = w->op == OP_RMS     ? nkg_rms_norm(ctx, x, NULL, eps)
                          : w->op == OP_LAYER   ? nkg_norm(ctx, x, NULL, NULL, eps)
                          : w->op == OP_GROUP   ? nkg_group_norm(ctx, x, w->groups, NULL, NULL, eps)
                                                : nkg_add_rms_norm(ctx, x, res, NULL, eps, &n_sum);

    /* the copy: bytes read + written by the op, as one ggml_cpy of half as many bytes */
    size_t moved = (size_t)count * es * (w->op == OP_ADD_RMS ? 4 : 2);
    struct ggml_tensor *from = ggml_new_tensor_1d(ctx, GGML_TYPE_I8, (int64_t)(moved / 2));
    struct ggml_tensor *into = ggml_new_tensor_1d(ctx, GGML_TYPE_I8, (int64_t)(moved / 2));
    memset(from->data, 1, moved / 2);
    struct ggml_tensor *copy = ggml_cpy(ctx, from, into);

    struct ggml_cgraph *graphs[3] = {graph_of(ctx, g, g_sum), graph_of(ctx, n, n_sum), graph_of(ctx, copy, NULL)};
    double t[3];
    time_graphs(graphs, 3, nth, rounds, t);
    double ratio = t[0] / t[1];
    double target = type == GGML_TYPE_F32 ? 3.0 : 4.0;
    int meets = ratio >= target;
    below_target += !meets;
    printf("| %-28s | %-4s | %d | %9.1f | %9.1f | %6.2fx | %-6s | %8.1f | %6.1f | %6.1f | %4.0f%% |\n", w->name,
           type_label(type), nth, t[0], t[1], ratio, meets ? "yes" : "no", t[2], moved / t[1] * 1e-3,
           moved / t[2] * 1e-3, 100.0 * t[2] / t[1]);
    fflush(stdout);
    ggml_free(ctx);
}

/* One block's worth of a LLaMA-7B layer at the residual: x += attn; h = rms_norm(x) * w;
 * y = W h (W 4096 x 4096 in f16); out = y + x. ggml: add, rms_norm, mul, mul_mat, add;
 * normkit: the fused add + RMS norm (with weight), mul_mat, add. */
static void bench_block(int64_t tokens, int nth, int rounds) {
    const int64_t d = 4096;
    struct ggml_context *ctx = new_context((size_t)(d * d * 2 + d * tokens * 4 * 16) + (64u << 20));
    struct ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, d, tokens);
    struct ggml_tensor *attn = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, d, tokens);
    struct ggml_tensor *w = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, d);
    struct ggml_tensor *wq = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, d, d);
    fill(x, 0);
    fill(attn, 0);
    for (int64_t j = 0; j < d; j++) {
        ((float *)w->data)[j] = 1.0f;
    }
    for (int64_t i = 0; i < d * d; i++) {
        ((ggml_fp16_t *)wq->data)[i] = ggml_fp32_to_fp16((float)(0.02 * normal()));
    }
    float eps = 1e-6f;
    struct ggml_tensor *g_sum = ggml_add(ctx, attn, x);
    struct ggml_tensor *g_norm = ggml_mul(ctx, ggml_rms_norm(ctx, g_sum, eps), w);
    struct ggml_tensor *g_out = ggml_add(ctx, ggml_mul_mat(ctx, wq, g_norm), g_sum);
    struct ggml_tensor *n_sum;
    struct ggml_tensor *n_norm = nkg_add_rms_norm(ctx, attn, x, w, eps, &n_sum);
    struct ggml_tensor *n_out = ggml_add(ctx, ggml_mul_mat(ctx, wq, n_norm), n_sum);
    struct ggml_cgraph *graphs[4] = {graph_of(ctx, g_out, NULL), graph_of(ctx, n_out, NULL),
                                     graph_of(ctx, g_norm, g_sum), graph_of(ctx, n_norm, n_sum)};
    double t[4];
    time_graphs(graphs, 4, nth, rounds, t);
    printf("| %5lld | %d | %9.1f | %9.1f | %8.1f (%4.1f%%) | %8.1f (%4.1f%%) | %5.2fx |\n", (long long)tokens, nth,
           t[0], t[1], t[2], 100.0 * t[2] / t[0], t[3], 100.0 * t[3] / t[1], t[0] / t[1]);
    fflush(stdout);
    ggml_free(ctx);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 31;
    if (rounds < 1) {
        fprintf(stderr, "usage: %s [rounds]\n", argv[0]);
        return 2;
    }
    nk_context *probe = NULL;
    const char *isa = "?";
    if (nk_context_create(1, &probe) == NK_OK) {
        static const char *const names[] = {"auto", "portable", "AVX2", "AVX-512", "NEON"};
        nk_isa i = nk_context_isa(probe);
        isa = (unsigned)i < 5 ? names[i] : "?";
        nk_context_destroy(probe);
    }
    printf("normkit ISA: %s; ggml CPU features: AVX2 %d, AVX-512 %d, F16C %d\n\n", isa, ggml_cpu_has_avx2(),
           ggml_cpu_has_avx512(), ggml_cpu_has_f16c());
    printf("## Per op: ggml's thread pool at 1 and 2 threads, median of %d interleaved rounds, us per call\n\n", rounds);
    printf("ggml: its op (bf16: ggml_cast to f32, the op, ggml_cast back; add + RMS: ggml_add, then the\n"
           "norm). normkit: the op of normkit_ggml.c on the tensor's own type. copy: ggml_cpy of the bytes\n"
           "the op reads and writes (the memory bound). Target: normkit >= 3x ggml in f32, >= 4x in bf16.\n\n");
    printf("| %-28s | %-4s | T | %9s | %9s | %7s | %-6s | %8s | %6s | %6s | %5s |\n", "op", "type", "ggml us",
           "normkit us", "ratio", "target", "copy us", "nk GB/s", "copy GB/s", "of copy");
    printf("|------------------------------|------|---|-----------|-----------|---------|--------|----------|--------|--------|-------|\n");
    double floor_us[3] = {0, 0, 0};
    for (int nth = 1; nth <= 2; nth++) {
        struct ggml_context *ctx = new_context(1u << 20);
        struct ggml_tensor *from = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1);
        struct ggml_tensor *into = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1);
        ggml_set_f32(from, 1.0f);
        struct ggml_cgraph *gf = graph_of(ctx, ggml_cpy(ctx, from, into), NULL);
        time_graphs(&gf, 1, nth, rounds, &floor_us[nth]);
        ggml_free(ctx);
    }
    if (floor_us[2] > 100.0) {
        printf("WARNING: a one-node graph takes %.0f us on 2 threads: another process holds a core, and the\n"
               "2-thread rows below measure the scheduler, not the ops.\n\n", floor_us[2]);
    }
    static const enum ggml_type types[] = {GGML_TYPE_F32, GGML_TYPE_BF16};
    for (size_t i = 0; i < sizeof workloads / sizeof *workloads; i++) {
        for (int t = 0; t < 2; t++) {
            for (int nth = 1; nth <= 2; nth++) {
                bench_workload(&workloads[i], types[t], nth, rounds);
            }
        }
    }
    printf("\n%d configurations below target. The floor of every row, a one-node graph (ggml_cpy of 4\n"
           "bytes: waking ggml's threads and the barrier after the node): %.1f us at 1 thread, %.1f us at 2.\n\n",
           below_target, floor_us[1], floor_us[2]);
    printf("## One block's worth of graph: add + RMS norm (weight) -> matmul (4096 x 4096, f16 weights) -> add\n\n");
    printf("us per graph, median of %d interleaved rounds; \"norm\" is the add + norm part alone, and its share of the block.\n\n",
           rounds > 11 ? 11 : rounds);
    printf("| tokens | T | ggml block | normkit block | ggml norm (share) | normkit norm (share) | block ratio |\n");
    printf("|--------|---|-----------|-----------|------------------|------------------|-------|\n");
    for (int nth = 1; nth <= 2; nth++) {
        bench_block(1, nth, rounds > 11 ? 11 : rounds);
        bench_block(64, nth, rounds > 11 ? 11 : rounds);
    }
    free_pools();
    return 0;
}
