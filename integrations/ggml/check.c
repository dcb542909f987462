/* Correctness of normkit's ggml ops (normkit_ggml.c) against ggml's own CPU ops and a float64
 * reference, on model shapes, in f32, bf16 and f16.
 *
 * Usage: check [small|full]   (small: a few rows per shape, for CI; full: whole model shapes)
 * Every shape but the one-row one is large enough for the adapter to split it between threads.
 *
 * For every case the same input goes through ggml's graph (f32: the norm, then ggml_mul by the
 * weight and ggml_add of the bias; bf16/f16: a cast to f32 before and back after, as ggml's CPU
 * norms take f32 only) and through normkit's op, computed with 1, 2 and 3 ggml threads. Checked:
 * - normkit's outputs are bitwise the same for 1, 2 and 3 threads;
 * - normkit is within tol of the float64 reference, element by element;
 * - ggml and normkit agree within tol_ggml + tol, element by element;
 * - the fused add's sum is bitwise the float sum rounded to the sum's type, in both.
 * One in three rows (group norm: groups) is 10000 + N(0,1), the rest N(0,1).
 *
 * Tolerances, for an output with float64 value y (after weight w and bias b):
 *   tol      = 32 u (|y| + |b| + |w|) + ulp_t(y)
 *   tol_ggml = tol + (log2(n) + 2) u |w| |mean| / sigma      (layer and group norm)
 * with u = 2^-24 (float rounding), n the values per statistic, mean and sigma the row's (or
 * group's) mean and sqrt(var + eps), ulp_t(y) one unit in the last place of the output type at y
 * (0 for f32: each half output is one rounding of a float result). 32 u covers the few float
 * operations per element (subtract, scale, multiply-add) and the rounding of the statistics.
 * ggml forms the mean from a float sum of n values and rounds it to float: an error of up to
 * about (log2(n) + 1) u |mean| per element before scaling, which on 10000 + N(0,1) is far above
 * the spread's rounding; normkit's statistics are exact to the rounding of the spread (its
 * contract: within 1e-4 absolute of float64 on such rows), so it has no such term.
 */
#include "harness.h"
#include "normkit_ggml.h"


typedef struct {
    const char *name;
    op_kind op;
    int64_t ne[4];
    int groups;
    int view; /* x is a strided view into a larger tensor */
} test_case;

static const test_case small_cases[] = {
    {"RMS norm, LLaMA-7B width", OP_RMS, {4096, 13, 1, 1}, 0, 0},
    {"RMS norm, one row (decode)", OP_RMS, {4096, 1, 1, 1}, 0, 0},
    {"RMS norm, strided view", OP_RMS, {4096, 5, 3, 1}, 0, 1},
    {"layer norm, BERT/GPT-2 width", OP_LAYER, {768, 64, 1, 1}, 0, 0},
    {"layer norm, strided view", OP_LAYER, {768, 11, 3, 1}, 0, 1},
    {"group norm, SD UNet channels", OP_GROUP, {8, 8, 320, 2}, 32, 0},
    {"add + RMS norm, LLaMA-7B width", OP_ADD_RMS, {4096, 13, 1, 1}, 0, 0},
    {"add + RMS norm, strided view", OP_ADD_RMS, {4096, 5, 3, 1}, 0, 1},
};

static const test_case full_cases[] = {
    {"RMS norm (512,4096), LLaMA-7B prefill", OP_RMS, {4096, 512, 1, 1}, 0, 0},
    {"RMS norm (1,4096), LLaMA-7B decode", OP_RMS, {4096, 1, 1, 1}, 0, 0},
    {"RMS norm, strided view", OP_RMS, {4096, 5, 3, 1}, 0, 1},
    {"layer norm (512,768), BERT/GPT-2", OP_LAYER, {768, 512, 1, 1}, 0, 0},
    {"layer norm, strided view", OP_LAYER, {768, 11, 3, 1}, 0, 1},
    {"group norm (1,320,64,64)/32, SD 1.5 UNet", OP_GROUP, {64, 64, 320, 1}, 32, 0},
    {"group norm (2,320,8,8)/32", OP_GROUP, {8, 8, 320, 2}, 32, 0},
    {"add + RMS norm (512,4096)", OP_ADD_RMS, {4096, 512, 1, 1}, 0, 0},
    {"add + RMS norm, strided view", OP_ADD_RMS, {4096, 5, 3, 1}, 0, 1},
};

static const double U = 0x1.0p-24;

/* One unit in the last place of type at magnitude |y| (0 for f32: see the tolerances above). */
static double ulp_of(enum ggml_type type, double y) {
    if (type == GGML_TYPE_F32) {
        return 0.0;
    }
    int mantissa = type == GGML_TYPE_BF16 ? 7 : 10;
    int min_exp = type == GGML_TYPE_BF16 ? -126 : -14;
    int e = y == 0.0 ? min_exp : (int)floor(log2(fabs(y)));
    if (e < min_exp) {
        e = min_exp;
    }
    return ldexp(1.0, e - mantissa);
}

static float round_to(enum ggml_type type, float v) {
    switch (type) {
    case GGML_TYPE_BF16: return ggml_bf16_to_fp32(ggml_fp32_to_bf16(v));
    case GGML_TYPE_F16: return ggml_fp16_to_fp32(ggml_fp32_to_fp16(v));
    default: return v;
    }
}

static int same_bits(const struct ggml_tensor *a, const struct ggml_tensor *b) {
    int64_t n = ggml_nelements(a);
    for (int64_t i = 0; i < n; i++) {
        float x = get(a, i), y = get(b, i);
        if (memcmp(&x, &y, sizeof x) != 0) {
            return 0;
        }
    }
    return 1;
}

/* Runs one case in one type; prints a line; returns 0 when every check passes. */
static int run_case(const test_case *c, enum ggml_type type) {
    const int64_t *ne = c->ne;
    int64_t count = ne[0] * ne[1] * ne[2] * ne[3];
    struct ggml_context *ctx = new_context((size_t)count * 4 * 24 + (64u << 20));
    struct ggml_tensor *x;
    if (c->view) { /* rows 64 elements apart beyond ne0, slices one row apart beyond ne1 */
        struct ggml_tensor *big = ggml_new_tensor_4d(ctx, type, ne[0] + 64, ne[1] + 1, ne[2], ne[3]);
        x = ggml_view_4d(ctx, big, ne[0], ne[1], ne[2], ne[3], big->nb[1], big->nb[2], big->nb[3], 0);
    } else {
        x = ggml_new_tensor_4d(ctx, type, ne[0], ne[1], ne[2], ne[3]);
    }
    int64_t per_stat = c->op == OP_GROUP ? ne[0] * ne[1] * (ne[2] / c->groups) : ne[0];
    int64_t unit_rows = c->op == OP_GROUP ? per_stat / ne[0] : 1;
    fill(x, unit_rows);
    struct ggml_tensor *res = NULL;
    if (c->op == OP_ADD_RMS) {
        res = ggml_new_tensor_4d(ctx, type, ne[0], ne[1], ne[2], ne[3]);
        fill(res, 0);
    }
    int64_t channels = c->op == OP_GROUP ? ne[2] : ne[0];
    struct ggml_tensor *w = c->op == OP_GROUP ? ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, 1, channels, 1)
                                              : ggml_new_tensor_1d(ctx, GGML_TYPE_F32, channels);
    struct ggml_tensor *b = NULL;
    for (int64_t j = 0; j < channels; j++) {
        ((float *)w->data)[j] = (float)(1.0 + 0.25 * normal());
    }
    if (c->op == OP_LAYER || c->op == OP_GROUP) {
        b = ggml_new_tensor(ctx, GGML_TYPE_F32, GGML_MAX_DIMS, w->ne);
        for (int64_t j = 0; j < channels; j++) {
            ((float *)b->data)[j] = (float)(0.1 * normal());
        }
    }
    float eps = c->op == OP_LAYER || c->op == OP_GROUP ? 1e-5f : 1e-6f;

    /* ggml's graph */
    struct ggml_tensor *g_sum;
    struct ggml_tensor *g = ggml_side(ctx, c->op, x, res, c->groups, eps, &g_sum);
    g = ggml_mul(ctx, g, w);
    if (b != NULL) {
        g = ggml_add(ctx, g, b);
    }
    g = to_type(ctx, g, type);
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, g);
    if (g_sum != NULL) {
        ggml_build_forward_expand(gf, g_sum);
    }
    compute(gf, 2);

    /* normkit's graph, at 1, 2 and 3 threads */
    struct ggml_tensor *n_sum = NULL;
    struct ggml_tensor *n = c->op == OP_RMS     ? nkg_rms_norm(ctx, x, w, eps)
                          : c->op == OP_LAYER   ? nkg_norm(ctx, x, w, b, eps)
                          : c->op == OP_GROUP   ? nkg_group_norm(ctx, x, c->groups, w, b, eps)
                                                : nkg_add_rms_norm(ctx, x, res, w, eps, &n_sum);
    struct ggml_cgraph *nf = ggml_new_graph(ctx);
    ggml_build_forward_expand(nf, n);
    if (n_sum != NULL) {
        ggml_build_forward_expand(nf, n_sum);
    }
    struct ggml_tensor *n1 = ggml_dup_tensor(ctx, n), *s1 = n_sum ? ggml_dup_tensor(ctx, n_sum) : NULL;
    int by_threads = 1;
    for (int nth = 1; nth <= 3; nth++) {
        compute(nf, nth);
        if (nth == 1) {
            memcpy(n1->data, n->data, ggml_nbytes(n)); /* n and n_sum are packed views */
            if (s1 != NULL) {
                memcpy(s1->data, n_sum->data, ggml_nbytes(n_sum));
            }
        } else {
            by_threads &= same_bits(n, n1) && (s1 == NULL || same_bits(n_sum, s1));
        }
    }

    /* float64 reference, per statistic (row, or (sample, group)) */
    /* errors against float64 on N(0,1) statistics [0] and on 10000 + N(0,1) ones [1] */
    double err_g[2] = {0, 0}, err_n[2] = {0, 0}, diff = 0, worst_n = 0, worst_gn = 0, worst_g = 0;
    int sums_exact = 1;
    int64_t stats = count / per_stat;
    double *hv = malloc(sizeof(double) * (size_t)per_stat);
    for (int64_t s = 0; s < stats; s++) {
        int64_t base = s * per_stat;
        double mean = 0, sq = 0;
        for (int64_t k = 0; k < per_stat; k++) {
            int64_t i = base + k;
            if (c->op == OP_ADD_RMS) {
                float exact = round_to(type, get(x, i) + get(res, i));
                float gs = get(g_sum, i), ns = get(n_sum, i);
                sums_exact &= memcmp(&exact, &gs, 4) == 0 && memcmp(&exact, &ns, 4) == 0;
                hv[k] = exact;
            } else {
                hv[k] = get(x, i);
            }
            mean += hv[k];
        }
        mean /= (double)per_stat;
        for (int64_t k = 0; k < per_stat; k++) {
            double d = c->op == OP_RMS || c->op == OP_ADD_RMS ? hv[k] : hv[k] - mean;
            sq += d * d;
        }
        double sigma = sqrt(sq / (double)per_stat + eps);
        int offset = fabs(mean) > 1000.0;
        for (int64_t k = 0; k < per_stat; k++) {
            int64_t i = base + k;
            int64_t ch = c->op == OP_GROUP ? (i / (ne[0] * ne[1])) % ne[2] : i % ne[0];
            double wv = ((float *)w->data)[ch], bv = b ? ((float *)b->data)[ch] : 0.0;
            double centered = c->op == OP_RMS || c->op == OP_ADD_RMS ? hv[k] : hv[k] - mean;
            double y = centered / sigma * wv + bv;
            double tol = 32 * U * (fabs(y) + fabs(bv) + fabs(wv)) + ulp_of(type, y);
            double tol_g = tol;
            if (c->op == OP_LAYER || c->op == OP_GROUP) {
                tol_g += (log2((double)per_stat) + 2) * U * fabs(wv) * fabs(mean) / sigma;
            }
            double eg = fabs(get(g, i) - y), en = fabs(get(n, i) - y), d = fabs(get(g, i) - get(n, i));
            err_g[offset] = fmax(err_g[offset], eg);
            err_n[offset] = fmax(err_n[offset], en);
            diff = fmax(diff, d);
            worst_g = fmax(worst_g, eg / tol_g);
            worst_n = fmax(worst_n, en / tol);
            worst_gn = fmax(worst_gn, d / (tol + tol_g));
            if (!(en <= tol)) {
                worst_n = INFINITY; /* NaN too */
            }
        }
    }
    free(hv);
    int ok = by_threads && worst_n <= 1.0 && worst_gn <= 1.0 && sums_exact;
    printf("| %-40s | %-4s | %8.1e | %8.1e | %8.1e | %8.1e | %8.1e | %5.2f | %-3s | %-4s | %-4s |\n", c->name,
           type_label(type), err_g[0], err_n[0], err_g[1], err_n[1], diff, worst_gn, by_threads ? "yes" : "NO",
           c->op == OP_ADD_RMS ? (sums_exact ? "yes" : "NO") : "-", ok ? "ok" : "FAIL");
    if (worst_g > 1.0) {
        printf("|   (ggml beyond its own bound: %.2f x tol_ggml)\n", worst_g);
    }
    ggml_free(ctx);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    int full = argc > 1 && strcmp(argv[1], "full") == 0;
    if (argc > 1 && !full && strcmp(argv[1], "small") != 0) {
        fprintf(stderr, "usage: %s [small|full]\n", argv[0]);
        return 2;
    }
    const test_case *cases = full ? full_cases : small_cases;
    size_t n_cases = full ? sizeof full_cases / sizeof *full_cases : sizeof small_cases / sizeof *small_cases;
    static const enum ggml_type types[] = {GGML_TYPE_F32, GGML_TYPE_BF16, GGML_TYPE_F16};
    printf("normkit's ops in ggml against ggml's own: max |error| against float64 on N(0,1) rows (err)\n"
           "and on 10000 + N(0,1) rows (1e4; group norm: groups), max |ggml - normkit| and its ratio to\n"
           "the tolerance (<= 1 passes); normkit bitwise the same at 1, 2 and 3 threads (nth); the fused\n"
           "add's sum bitwise the float sum rounded to its type (sum). Errors include the output's\n"
           "rounding to bf16 or f16.\n\n");
    printf("| %-40s | %-4s | %8s | %8s | %8s | %8s | %8s | %5s | %-3s | %-4s | %-4s |\n", "case", "type",
           "ggml err", "nk err", "ggml 1e4", "nk 1e4", "|g - nk|", "/tol", "nth", "sum", "pass");
    printf("|%.42s|------|----------|----------|----------|----------|----------|-------|-----|------|------|\n",
           "------------------------------------------");
    int failures = 0;
    for (size_t i = 0; i < n_cases; i++) {
        for (size_t t = 0; t < 3; t++) {
            failures += run_case(&cases[i], types[t]);
        }
    }
    free_pools();
    printf("\n%s: %d of %zu cases failed\n", failures ? "FAIL" : "ok", failures, n_cases * 3);
    return failures ? 1 : 0;
}
