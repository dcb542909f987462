// normkit and oneDNN side by side in one process, with a copy of the same bytes as the ceiling.
//
//   native THREADS BUDGET_MS [FILTER [--onednn-only]]
//
// For every workload: normkit (C API), oneDNN (C++ API) and `copy` (memcpy of half the
// workload's minimal traffic, so one read and one write move the same bytes) are timed in turn,
// each as the median of repeated calls within BUDGET_MS, on THREADS threads (normkit: a context
// of THREADS threads; oneDNN and the copy: OpenMP with THREADS threads, or for a oneDNN built on
// TBB a tbb::global_control of THREADS). Prints one JSON object per line: {"workload", "lib",
// "threads", "ns", "bytes"} for timings and {"workload", "lib", "max_err"} for the accuracy
// checks on 10000 + N(0,1) data against float64. oneDNN's lines carry its version as the library,
// "onednn-MAJOR.MINOR" from dnnl_version(), so builds against several oneDNN releases can be
// compared in one report. A workload the linked oneDNN does not offer prints no oneDNN line
// (group norm needs oneDNN 3.3, RMS norm its layer norm's rms_norm flag of 3.9; a bf16 workload
// needs an implementation for bf16 on this CPU). The `_bf16` workloads hold bf16 data (the float
// workloads' values rounded to nearest even) with float parameters and statistics, as
// normkit's `_bf16` functions take them; their minimal traffic is 2 bytes per element read and
// written. FILTER, if
// given and not empty, keeps the workloads whose name contains it. --onednn-only times oneDNN
// alone (no normkit, no copy): for a second build against another oneDNN, whose normkit and copy
// lines would repeat the first build's.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <omp.h>

#include "dnnl.hpp"
#include "normkit.h"

// Whether the oneDNN compiled against is release major.minor or later.
#define NATIVE_DNNL_AT_LEAST(major, minor)  \
    (DNNL_VERSION_MAJOR > (major) ||        \
     (DNNL_VERSION_MAJOR == (major) && DNNL_VERSION_MINOR >= (minor)))

#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_TBB
#include <oneapi/tbb/global_control.h>
#endif

using dnnl::memory;
using Clock = std::chrono::steady_clock;

namespace {

int g_threads = 1;
double g_budget_ms = 300;
std::string g_filter;
// false with --onednn-only: normkit and the copy are not timed.
bool g_with_normkit = true;
// While tiny calls run: each library's time is its per-call latency, and no copy is timed.
bool g_tiny = false;
// oneDNN's library name in the output: "onednn-MAJOR.MINOR" of the linked library.
std::string g_onednn = "onednn";
nk_context *g_ctx = nullptr;
dnnl::engine g_eng;
dnnl::stream g_stream;

void check(nk_status s, const char *what) {
    if (s != NK_OK) {
        std::fprintf(stderr, "%s: %s (%s)\n", what, nk_status_string(s), nk_last_error_message());
        std::exit(1);
    }
}

// A float buffer aligned to 64 bytes, filled from a fixed seed.
struct Buf {
    float *p = nullptr;
    size_t n = 0;
    explicit Buf(size_t n_, float offset = 0.f, uint64_t seed = 1) : n(n_) {
        p = static_cast<float *>(std::aligned_alloc(64, ((n * 4 + 63) / 64) * 64 + 64));
        uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
        for (size_t i = 0; i < n; i++) {
            // Sum of four uniforms: roughly normal, mean 0, variance 1/3 * ... scaled to ~1.
            float acc = 0;
            for (int k = 0; k < 4; k++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                acc += static_cast<float>((s >> 40) * (1.0 / (1ull << 24))) - 0.5f;
            }
            p[i] = offset + acc * 1.7320508f;
        }
    }
    Buf(const Buf &) = delete;
    ~Buf() { std::free(p); }
};

// The element type of a workload's data (its parameters and statistics are float either way).
enum class Dt { f32, bf16 };

// The workload name's tag for the type ("" for float, the names of the float workloads).
const char *dt_tag(Dt t) { return t == Dt::bf16 ? "_bf16" : ""; }

size_t dt_bytes(Dt t) { return t == Dt::bf16 ? 2 : 4; }

memory::data_type dnnl_dt(Dt t) {
    return t == Dt::bf16 ? memory::data_type::bf16 : memory::data_type::f32;
}

// A workload's tensor of type `t`: Buf's values, for bf16 rounded to nearest even and packed
// into the front half of the same buffer (nk_bf16 and oneDNN's bf16 are both the upper 16 bits
// of a float).
struct Data : Buf {
    Data(Dt t, size_t n, float offset = 0.f, uint64_t seed = 1) : Buf(n, offset, seed) {
        if (t != Dt::bf16) return;
        // Front to back: bf16 value i (bytes 2i and 2i + 1) overwrites only floats already read.
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            std::memcpy(&u, &p[i], 4);
            uint16_t h = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
            std::memcpy(reinterpret_cast<char *>(p) + 2 * i, &h, 2);
        }
    }
    float *f32() const { return p; }
    nk_bf16 *bf16() const { return reinterpret_cast<nk_bf16 *>(p); }
};

double now_ns() {
    return std::chrono::duration<double, std::nano>(Clock::now().time_since_epoch()).count();
}

// Median time of one call of `f`: two warm-up calls, then repeated calls until the budget is
// spent (at least 5, at most 2000).
double median_ns(const std::function<void()> &f) {
    f();
    f();
    std::vector<double> t;
    double start = now_ns();
    while (t.size() < 5 || (t.size() < 2000 && now_ns() - start < g_budget_ms * 1e6)) {
        double a = now_ns();
        f();
        t.push_back(now_ns() - a);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// Latency of a tiny call: median over batches of 256 calls, per call.
double latency_ns(const std::function<void()> &f) {
    for (int i = 0; i < 1000; i++) f();
    std::vector<double> t;
    double start = now_ns();
    while (t.size() < 50 || (t.size() < 5000 && now_ns() - start < g_budget_ms * 1e6)) {
        double a = now_ns();
        for (int i = 0; i < 256; i++) f();
        t.push_back((now_ns() - a) / 256);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

void emit(const std::string &w, const char *lib, double ns, double bytes) {
    std::printf("{\"workload\": \"%s\", \"lib\": \"%s\", \"threads\": %d, \"ns\": %.1f, "
                "\"bytes\": %.0f}\n",
                w.c_str(), lib, g_threads, ns, bytes);
    std::fflush(stdout);
}

void emit_err(const std::string &w, const char *lib, double err) {
    std::printf("{\"workload\": \"%s\", \"lib\": \"%s\", \"max_err\": %.3e}\n", w.c_str(), lib,
                err);
    std::fflush(stdout);
}

bool wanted(const std::string &w) { return g_filter.empty() || w.find(g_filter) != std::string::npos; }

// Let spinning OpenMP and rayon workers go to sleep between libraries so neither steals the
// other's cores.
void settle() { std::this_thread::sleep_for(std::chrono::milliseconds(30)); }

// One library's timing of a workload (median, or per-call latency while tiny calls run), then
// the pause before the next library. normkit's are skipped with --onednn-only.
void time_normkit(const std::string &w, const std::function<void()> &f, double bytes) {
    if (!g_with_normkit) return;
    emit(w, "normkit", g_tiny ? latency_ns(f) : median_ns(f), bytes);
    settle();
}

void time_onednn(const std::string &w, const std::function<void()> &f, double bytes) {
    emit(w, g_onednn.c_str(), g_tiny ? latency_ns(f) : median_ns(f), bytes);
    settle();
}

// Runs `f`, which sets up and times a oneDNN primitive; a oneDNN that has no implementation for
// it (a data type its release or this CPU lacks) prints no line for it.
void with_onednn(const std::string &w, const std::function<void()> &f) {
    try {
        f();
    } catch (const dnnl::error &e) {
        std::fprintf(stderr, "%s: %s has no implementation (%s)\n", w.c_str(), g_onednn.c_str(),
                     e.what());
    }
}

// The copy ceiling: `bytes` of traffic = bytes/2 read + bytes/2 written, split over the threads.
void time_copy(const std::string &w, double bytes) {
    if (!g_with_normkit || g_tiny) return;
    size_t half = static_cast<size_t>(bytes / 2) / 4;
    Buf src(half), dst(half);
    double ns = median_ns([&] {
        if (g_threads == 1) {
            std::memcpy(dst.p, src.p, half * 4);
            return;
        }
#pragma omp parallel num_threads(g_threads)
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            size_t lo = half * t / nt, hi = half * (t + 1) / nt;
            std::memcpy(dst.p + lo, src.p + lo, (hi - lo) * 4);
        }
    });
    emit(w, "copy", ns, bytes);
    settle();
}

memory mem(const memory::desc &md, void *p) { return memory(md, g_eng, p); }

// Times a oneDNN primitive run with `args` (one execution and a wait per call).
void time_primitive(const std::string &w, const dnnl::primitive &prim,
                    const std::unordered_map<int, memory> &args, double bytes) {
    time_onednn(w, [&] {
        prim.execute(g_stream, args);
        g_stream.wait();
    }, bytes);
}

struct BnShape {
    long n, c, h, w;
    bool nhwc;
    std::string name(const char *op) const {
        char b[96];
        if (h * w == 1 && !nhwc)
            std::snprintf(b, sizeof b, "%s_nc_%ldx%ld", op, n, c);
        else
            std::snprintf(b, sizeof b, "%s_%s_%ldx%ldx%ldx%ld", op, nhwc ? "nhwc" : "nchw", n, c,
                          h, w);
        return b;
    }
    size_t elems() const { return size_t(n) * c * h * w; }
    nk_shape nk() const {
        return nk_shape{size_t(n), size_t(c), size_t(h * w), nhwc ? NK_LAYOUT_NSC : NK_LAYOUT_NCS};
    }
    memory::desc md(Dt t = Dt::f32) const {
        if (h * w == 1 && !nhwc) return memory::desc({n, c}, dnnl_dt(t), memory::format_tag::nc);
        return memory::desc({n, c, h, w}, dnnl_dt(t),
                            nhwc ? memory::format_tag::nhwc : memory::format_tag::nchw);
    }
};

constexpr float kEps = 1e-5f;
constexpr float kMomentum = 0.1f;

void bn_training(const BnShape &s) {
    std::string w = s.name("bn_train");
    if (!wanted(w)) return;
    size_t n = s.elems();
    Buf x(n), y(n), gamma(s.c, 1.f, 2), beta(s.c, 0.f, 3), rm(s.c), rv(s.c, 1.f), sm(s.c), si(s.c);
    time_normkit(w, [&] {
        check(nk_batchnorm_forward_training(g_ctx, s.nk(), x.p, y.p, gamma.p, beta.p, kEps,
                                            kMomentum, 0, rm.p, rv.p, sm.p, si.p),
              "bn training");
    }, 8.0 * n);
    using nf = dnnl::normalization_flags;
    auto md = s.md();
    dnnl::batch_normalization_forward::primitive_desc pd(
        g_eng, dnnl::prop_kind::forward_training, md, md, kEps, nf::use_scale | nf::use_shift);
    dnnl::batch_normalization_forward prim(pd);
    auto mean = mem(pd.mean_desc(), sm.p), var = mem(pd.variance_desc(), si.p);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, mem(md, x.p)},           {DNNL_ARG_DST, mem(md, y.p)},
        {DNNL_ARG_SCALE, mem(pd.weights_desc(), gamma.p)},
        {DNNL_ARG_SHIFT, mem(pd.weights_desc(), beta.p)},
        {DNNL_ARG_MEAN, mean},                  {DNNL_ARG_VARIANCE, var}};
    time_primitive(w, prim, args, 8.0 * n);
    time_copy(w, 8.0 * n);
}

// `name`, if given, replaces the workload's name.
void bn_inference(const BnShape &s, Dt t = Dt::f32, const char *name = nullptr) {
    std::string w = name ? name : s.name((std::string("bn_infer") + dt_tag(t)).c_str());
    if (!wanted(w)) return;
    size_t n = s.elems();
    double bytes = 2.0 * dt_bytes(t) * n;
    Data x(t, n), y(t, n);
    Buf gamma(s.c, 1.f, 2), beta(s.c, 0.f, 3), mean(s.c, 0.f, 4), var(s.c, 1.f, 5);
    time_normkit(w, [&] {
        check(t == Dt::bf16
                  ? nk_batchnorm_forward_inference_bf16(g_ctx, s.nk(), x.bf16(), y.bf16(), gamma.p,
                                                        beta.p, mean.p, var.p, kEps, 0)
                  : nk_batchnorm_forward_inference(g_ctx, s.nk(), x.f32(), y.f32(), gamma.p,
                                                   beta.p, mean.p, var.p, kEps, 0),
              "bn inference");
    }, bytes);
    with_onednn(w, [&] {
        using nf = dnnl::normalization_flags;
        auto md = s.md(t);
        dnnl::batch_normalization_forward::primitive_desc pd(
            g_eng, dnnl::prop_kind::forward_inference, md, md, kEps,
            nf::use_global_stats | nf::use_scale | nf::use_shift);
        dnnl::batch_normalization_forward prim(pd);
        std::unordered_map<int, memory> args = {
            {DNNL_ARG_SRC, mem(md, x.p)},
            {DNNL_ARG_DST, mem(md, y.p)},
            {DNNL_ARG_SCALE, mem(pd.weights_desc(), gamma.p)},
            {DNNL_ARG_SHIFT, mem(pd.weights_desc(), beta.p)},
            {DNNL_ARG_MEAN, mem(pd.mean_desc(), mean.p)},
            {DNNL_ARG_VARIANCE, mem(pd.variance_desc(), var.p)}};
        time_primitive(w, prim, args, bytes);
    });
    time_copy(w, bytes);
}

void bn_backward(const BnShape &s) {
    std::string w = s.name("bn_bwd");
    if (!wanted(w)) return;
    size_t n = s.elems();
    Buf x(n), dy(n, 0.f, 7), dx(n), gamma(s.c, 1.f, 2), beta(s.c, 0.f, 3), sm(s.c), si(s.c),
        dg(s.c), db(s.c);
    check(nk_batchnorm_forward_training(g_ctx, s.nk(), x.p, dx.p, gamma.p, beta.p, kEps, kMomentum,
                                        0, nullptr, nullptr, sm.p, si.p),
          "bn training");
    time_normkit(w, [&] {
        check(nk_batchnorm_backward(g_ctx, s.nk(), x.p, dy.p, dx.p, gamma.p, sm.p, si.p, dg.p,
                                    db.p),
              "bn backward");
    }, 12.0 * n);
    using nf = dnnl::normalization_flags;
    auto md = s.md();
    auto flags = nf::use_scale | nf::use_shift;
    dnnl::batch_normalization_forward::primitive_desc fpd(
        g_eng, dnnl::prop_kind::forward_training, md, md, kEps, flags);
    dnnl::batch_normalization_backward::primitive_desc pd(g_eng, dnnl::prop_kind::backward, md, md,
                                                          md, kEps, flags, fpd);
    dnnl::batch_normalization_backward prim(pd);
    Buf var(s.c, 1.f, 5), dshift(s.c);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, mem(md, x.p)},
        {DNNL_ARG_DIFF_DST, mem(md, dy.p)},
        {DNNL_ARG_DIFF_SRC, mem(md, dx.p)},
        {DNNL_ARG_MEAN, mem(pd.mean_desc(), sm.p)},
        {DNNL_ARG_VARIANCE, mem(pd.variance_desc(), var.p)},
        {DNNL_ARG_SCALE, mem(fpd.weights_desc(), gamma.p)},
        {DNNL_ARG_DIFF_SCALE, mem(fpd.weights_desc(), dg.p)},
        {DNNL_ARG_DIFF_SHIFT, mem(fpd.weights_desc(), dshift.p)}};
    time_primitive(w, prim, args, 12.0 * n);
    time_copy(w, 12.0 * n);
}

// Layer norm, or RMS norm if `rms`: oneDNN's RMS norm is its layer norm with the rms_norm flag
// (3.9 and later). `name`, if given, replaces the workload's name.
void rownorm(long rows, long cols, bool rms, Dt t = Dt::f32, const char *name = nullptr) {
    std::string w = name ? std::string(name)
                         : std::string(rms ? "rms_fwd" : "ln_fwd") + dt_tag(t) + "_" +
                               std::to_string(rows) + "x" + std::to_string(cols);
    if (!wanted(w)) return;
    bool onednn = !rms || NATIVE_DNNL_AT_LEAST(3, 9);
    if (!g_with_normkit && !onednn) return;
    size_t n = size_t(rows) * cols;
    double bytes = 2.0 * dt_bytes(t) * n;
    Data x(t, n), y(t, n);
    Buf gamma(cols, 1.f, 2), beta(cols, 0.f, 3), sm(rows), si(rows);
    time_normkit(w, [&] {
        bool b = t == Dt::bf16;
        check(rms ? (b ? nk_rmsnorm_forward_bf16(g_ctx, rows, cols, x.bf16(), y.bf16(), gamma.p,
                                                 kEps, si.p)
                       : nk_rmsnorm_forward(g_ctx, rows, cols, x.f32(), y.f32(), gamma.p, kEps,
                                            si.p))
                  : (b ? nk_layernorm_forward_bf16(g_ctx, rows, cols, x.bf16(), y.bf16(),
                                                   gamma.p, beta.p, kEps, sm.p, si.p)
                       : nk_layernorm_forward(g_ctx, rows, cols, x.f32(), y.f32(), gamma.p,
                                              beta.p, kEps, sm.p, si.p)),
              rms ? "rms norm" : "layer norm");
    }, bytes);
    if (onednn) with_onednn(w, [&] {
        using nf = dnnl::normalization_flags;
        memory::desc md({rows, cols}, dnnl_dt(t), memory::format_tag::ab);
#if NATIVE_DNNL_AT_LEAST(3, 9)
        auto flags = nf::use_scale | (rms ? nf::rms_norm : nf::use_shift);
#else
        auto flags = nf::use_scale | nf::use_shift;
#endif
        dnnl::layer_normalization_forward::primitive_desc pd(
            g_eng, dnnl::prop_kind::forward_training, md, md, kEps, flags);
        dnnl::layer_normalization_forward prim(pd);
        std::unordered_map<int, memory> args = {
            {DNNL_ARG_SRC, mem(md, x.p)},
            {DNNL_ARG_DST, mem(md, y.p)},
            {DNNL_ARG_SCALE, mem(pd.weights_desc(), gamma.p)},
            {DNNL_ARG_VARIANCE, mem(pd.variance_desc(), si.p)}};
        if (!rms) {
            args.insert({DNNL_ARG_SHIFT, mem(pd.weights_desc(), beta.p)});
            args.insert({DNNL_ARG_MEAN, mem(pd.mean_desc(), sm.p)});
        }
        time_primitive(w, prim, args, bytes);
    });
    time_copy(w, bytes);
}

// oneDNN's group norm primitive appeared in 3.3.
void groupnorm(long n_, long c, long h, long w_, long groups) {
    char b[96];
    std::snprintf(b, sizeof b, "gn_fwd_nchw_%ldx%ldx%ldx%ld_g%ld", n_, c, h, w_, groups);
    std::string w = b;
    if (!wanted(w)) return;
#if !NATIVE_DNNL_AT_LEAST(3, 3)
    if (!g_with_normkit) return;
#endif
    size_t n = size_t(n_) * c * h * w_;
    Buf x(n), y(n), gamma(c, 1.f, 2), beta(c, 0.f, 3), sm(n_ * groups), si(n_ * groups);
    nk_shape shape{size_t(n_), size_t(c), size_t(h * w_), NK_LAYOUT_NCS};
    time_normkit(w, [&] {
        check(nk_groupnorm_forward(g_ctx, shape, groups, x.p, y.p, gamma.p, beta.p, kEps,
                                   sm.p, si.p),
              "group norm");
    }, 8.0 * n);
#if NATIVE_DNNL_AT_LEAST(3, 3)
    using nf = dnnl::normalization_flags;
    memory::desc md({n_, c, h, w_}, memory::data_type::f32, memory::format_tag::nchw);
    dnnl::group_normalization_forward::primitive_desc pd(
        g_eng, dnnl::prop_kind::forward_training, md, md, groups, kEps,
        nf::use_scale | nf::use_shift);
    dnnl::group_normalization_forward prim(pd);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, mem(md, x.p)},
        {DNNL_ARG_DST, mem(md, y.p)},
        {DNNL_ARG_SCALE, mem(pd.weights_desc(), gamma.p)},
        {DNNL_ARG_SHIFT, mem(pd.weights_desc(), beta.p)},
        {DNNL_ARG_MEAN, mem(pd.mean_desc(), sm.p)},
        {DNNL_ARG_VARIANCE, mem(pd.variance_desc(), si.p)}};
    time_primitive(w, prim, args, 8.0 * n);
#endif
    time_copy(w, 8.0 * n);
}

// oneDNN has no instance norm: its users run batch norm on (1, N*C, H, W), as PyTorch does
// internally, with gamma and beta repeated per sample (the same with every oneDNN release, though
// 3.3 and later could also run group norm with C groups).
void instancenorm(long n_, long c, long h, long w_) {
    char b[96];
    std::snprintf(b, sizeof b, "in_fwd_nchw_%ldx%ldx%ldx%ld", n_, c, h, w_);
    std::string w = b;
    if (!wanted(w)) return;
    size_t n = size_t(n_) * c * h * w_;
    Buf x(n), y(n), gamma(c, 1.f, 2), beta(c, 0.f, 3), sm(n_ * c), si(n_ * c);
    nk_shape shape{size_t(n_), size_t(c), size_t(h * w_), NK_LAYOUT_NCS};
    time_normkit(w, [&] {
        check(nk_instancenorm_forward(g_ctx, shape, x.p, y.p, gamma.p, beta.p, kEps, sm.p,
                                      si.p),
              "instance norm");
    }, 8.0 * n);
    using nf = dnnl::normalization_flags;
    memory::desc md({1, n_ * c, h, w_}, memory::data_type::f32, memory::format_tag::nchw);
    dnnl::batch_normalization_forward::primitive_desc pd(
        g_eng, dnnl::prop_kind::forward_training, md, md, kEps, nf::use_scale | nf::use_shift);
    dnnl::batch_normalization_forward prim(pd);
    Buf g2(n_ * c), b2(n_ * c);
    for (long i = 0; i < n_ * c; i++) {
        g2.p[i] = gamma.p[i % c];
        b2.p[i] = beta.p[i % c];
    }
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, mem(md, x.p)},
        {DNNL_ARG_DST, mem(md, y.p)},
        {DNNL_ARG_SCALE, mem(pd.weights_desc(), g2.p)},
        {DNNL_ARG_SHIFT, mem(pd.weights_desc(), b2.p)},
        {DNNL_ARG_MEAN, mem(pd.mean_desc(), sm.p)},
        {DNNL_ARG_VARIANCE, mem(pd.variance_desc(), si.p)}};
    time_primitive(w, prim, args, 8.0 * n);
    time_copy(w, 8.0 * n);
}

// Inverted dropout with a bit-packed mask written (forward) and read (backward). Minimal
// traffic: the floats read and written plus one bit per element. oneDNN has no dropout primitive
// (later releases apply dropout only as an attribute of other primitives).
void dropout(size_t n, float p) {
    if (!g_with_normkit) return;
    char b[64];
    std::snprintf(b, sizeof b, "dropout_p%g_%zu", p, n);
    std::string fw = std::string(b) + "_fwd", bw = std::string(b) + "_bwd";
    double bytes = 8.0 * n + n / 8.0;
    Buf x(n), y(n);
    std::vector<uint8_t> mask((n + 7) / 8);
    if (wanted(fw)) {
        time_normkit(fw, [&] {
            check(nk_dropout_forward(g_ctx, n, x.p, y.p, p, 42, 0, mask.data()), "dropout");
        }, bytes);
        time_copy(fw, bytes);
    }
    if (wanted(bw)) {
        check(nk_dropout_forward(g_ctx, n, x.p, y.p, p, 42, 0, mask.data()), "dropout");
        time_normkit(bw, [&] {
            check(nk_dropout_backward(g_ctx, n, x.p, y.p, p, 42, 0, mask.data()),
                  "dropout backward");
        }, bytes);
        time_copy(bw, bytes);
    }
}

// Tiny calls, timed as per-call latency: batch-norm inference of one sample of 64 channels and
// layer norm of one row of 768.
void tiny() {
    g_tiny = true;
    bn_inference({1, 64, 1, 1, false}, Dt::f32, "tiny_bn_infer_1x64x1x1");
    rownorm(1, 768, false, Dt::f32, "tiny_ln_1x768");
    g_tiny = false;
}

// Accuracy on 10000 + N(0,1): batch norm training (32,64,16,16) NCHW and inference from the
// exact float statistics, layer norm (256,768); max |y - y_ref| with y_ref in float64 from the
// same float input, gamma = 1 and beta = 0 so the error is in units of the normalized value.
void accuracy() {
    if (!wanted("accuracy")) return;
    const long N = 32, C = 64, S = 256;
    size_t n = size_t(N) * C * S;
    Buf x(n, 10000.f, 11), y(n), one(C, 1.f, 0), zero(C, 0.f, 0), sm(C), si(C), var(C);
    for (long c = 0; c < C; c++) one.p[c] = 1.f, zero.p[c] = 0.f;
    std::vector<double> mean(C), vr(C);
    for (long c = 0; c < C; c++) {
        double s = 0, q = 0;
        for (long i = 0; i < N; i++)
            for (long k = 0; k < S; k++) s += x.p[(i * C + c) * S + k];
        double m = s / (N * S);
        for (long i = 0; i < N; i++)
            for (long k = 0; k < S; k++) {
                double d = x.p[(i * C + c) * S + k] - m;
                q += d * d;
            }
        mean[c] = m;
        vr[c] = q / (N * S);
    }
    // Training: reference from the float64 batch statistics.
    auto err_train = [&]() {
        double e = 0;
        for (long i = 0; i < N; i++)
            for (long c = 0; c < C; c++)
                for (long k = 0; k < S; k++) {
                    size_t j = (i * C + c) * S + k;
                    double r = (x.p[j] - mean[c]) / std::sqrt(vr[c] + kEps);
                    e = std::max(e, std::fabs(y.p[j] - r));
                }
        return e;
    };
    BnShape s{N, C, 16, 16, false};
    check(nk_batchnorm_forward_training(g_ctx, s.nk(), x.p, y.p, one.p, zero.p, kEps, kMomentum, 0,
                                        nullptr, nullptr, sm.p, si.p),
          "bn training");
    if (g_with_normkit) emit_err("accuracy_bn_train", "normkit", err_train());
    using nf = dnnl::normalization_flags;
    auto md = s.md();
    {
        dnnl::batch_normalization_forward::primitive_desc pd(
            g_eng, dnnl::prop_kind::forward_training, md, md, kEps, nf::use_scale | nf::use_shift);
        dnnl::batch_normalization_forward(pd).execute(
            g_stream, {{DNNL_ARG_SRC, mem(md, x.p)},
                       {DNNL_ARG_DST, mem(md, y.p)},
                       {DNNL_ARG_SCALE, mem(pd.weights_desc(), one.p)},
                       {DNNL_ARG_SHIFT, mem(pd.weights_desc(), zero.p)},
                       {DNNL_ARG_MEAN, mem(pd.mean_desc(), sm.p)},
                       {DNNL_ARG_VARIANCE, mem(pd.variance_desc(), var.p)}});
        g_stream.wait();
        emit_err("accuracy_bn_train", g_onednn.c_str(), err_train());
    }
    // Inference from float statistics (the mean and variance rounded to float): the reference
    // uses those same floats in float64.
    Buf fm(C), fv(C);
    for (long c = 0; c < C; c++) fm.p[c] = float(mean[c]), fv.p[c] = float(vr[c]);
    auto err_infer = [&]() {
        double e = 0;
        for (size_t j = 0; j < n; j++) {
            long c = (j / S) % C;
            double r = (x.p[j] - double(fm.p[c])) / std::sqrt(double(fv.p[c]) + double(kEps));
            e = std::max(e, std::fabs(y.p[j] - r));
        }
        return e;
    };
    check(nk_batchnorm_forward_inference(g_ctx, s.nk(), x.p, y.p, one.p, zero.p, fm.p, fv.p, kEps,
                                         0),
          "bn inference");
    if (g_with_normkit) emit_err("accuracy_bn_infer", "normkit", err_infer());
    {
        dnnl::batch_normalization_forward::primitive_desc pd(
            g_eng, dnnl::prop_kind::forward_inference, md, md, kEps,
            nf::use_global_stats | nf::use_scale | nf::use_shift);
        dnnl::batch_normalization_forward(pd).execute(
            g_stream, {{DNNL_ARG_SRC, mem(md, x.p)},
                       {DNNL_ARG_DST, mem(md, y.p)},
                       {DNNL_ARG_SCALE, mem(pd.weights_desc(), one.p)},
                       {DNNL_ARG_SHIFT, mem(pd.weights_desc(), zero.p)},
                       {DNNL_ARG_MEAN, mem(pd.mean_desc(), fm.p)},
                       {DNNL_ARG_VARIANCE, mem(pd.variance_desc(), fv.p)}});
        g_stream.wait();
        emit_err("accuracy_bn_infer", g_onednn.c_str(), err_infer());
    }
    // Layer norm (256, 768) on the same data.
    const long R = 256, K = 768;
    Buf gl(K, 1.f, 0), bl(K, 0.f, 0), lm(R), ls(R);
    for (long k = 0; k < K; k++) gl.p[k] = 1.f, bl.p[k] = 0.f;
    auto err_ln = [&]() {
        double e = 0;
        for (long r = 0; r < R; r++) {
            double s1 = 0, q = 0;
            for (long k = 0; k < K; k++) s1 += x.p[r * K + k];
            double m = s1 / K;
            for (long k = 0; k < K; k++) q += (x.p[r * K + k] - m) * (x.p[r * K + k] - m);
            double inv = 1 / std::sqrt(q / K + kEps);
            for (long k = 0; k < K; k++)
                e = std::max(e, std::fabs(y.p[r * K + k] - (x.p[r * K + k] - m) * inv));
        }
        return e;
    };
    check(nk_layernorm_forward(g_ctx, R, K, x.p, y.p, gl.p, bl.p, kEps, lm.p, ls.p), "layer norm");
    if (g_with_normkit) emit_err("accuracy_ln", "normkit", err_ln());
    {
        memory::desc lmd({R, K}, memory::data_type::f32, memory::format_tag::ab);
        dnnl::layer_normalization_forward::primitive_desc pd(
            g_eng, dnnl::prop_kind::forward_training, lmd, lmd, kEps, nf::use_scale | nf::use_shift);
        dnnl::layer_normalization_forward(pd).execute(
            g_stream, {{DNNL_ARG_SRC, mem(lmd, x.p)},
                       {DNNL_ARG_DST, mem(lmd, y.p)},
                       {DNNL_ARG_SCALE, mem(pd.weights_desc(), gl.p)},
                       {DNNL_ARG_SHIFT, mem(pd.weights_desc(), bl.p)},
                       {DNNL_ARG_MEAN, mem(pd.mean_desc(), lm.p)},
                       {DNNL_ARG_VARIANCE, mem(pd.variance_desc(), ls.p)}});
        g_stream.wait();
        emit_err("accuracy_ln", g_onednn.c_str(), err_ln());
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 3 || argc > 5 || (argc == 5 && std::string(argv[4]) != "--onednn-only")) {
        std::fprintf(stderr, "usage: %s THREADS BUDGET_MS [FILTER [--onednn-only]]\n", argv[0]);
        return 2;
    }
    g_threads = std::atoi(argv[1]);
    g_budget_ms = std::atof(argv[2]);
    if (argc > 3) g_filter = argv[3];
    g_with_normkit = argc < 5;
    omp_set_num_threads(g_threads);
#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_TBB
    // A oneDNN on TBB takes its threads from TBB's arena: cap it as a TBB application would.
    tbb::global_control tbb_threads(tbb::global_control::max_allowed_parallelism,
                                    size_t(g_threads));
#endif
    check(nk_context_create(size_t(g_threads), &g_ctx), "context");
    g_eng = dnnl::engine(dnnl::engine::kind::cpu, 0);
    g_stream = dnnl::stream(g_eng);

    const dnnl_version_t *v = dnnl_version();
    g_onednn = "onednn-" + std::to_string(v->major) + "." + std::to_string(v->minor);
    uint32_t nv = nk_version();
    std::printf("{\"meta\": \"%s\", \"version\": \"%d.%d.%d\"}\n", g_onednn.c_str(),
                v->major, v->minor, v->patch);
    if (g_with_normkit)
        std::printf("{\"meta\": \"normkit\", \"version\": \"%u.%u.%u\"}\n", nv >> 16,
                    (nv >> 8) & 0xff, nv & 0xff);
    accuracy();
    tiny();
    const BnShape shapes[] = {{32, 64, 56, 56, false}, {32, 256, 14, 14, false},
                              {8, 2048, 7, 7, false},  {1, 64, 112, 112, false},
                              {32, 64, 56, 56, true},  {32, 256, 14, 14, true},
                              {8, 2048, 7, 7, true},   {1, 64, 112, 112, true},
                              {4096, 1024, 1, 1, false}};
    for (const auto &s : shapes) {
        bn_training(s);
        bn_inference(s);
    }
    bn_backward({32, 64, 56, 56, false});
    bn_backward({32, 64, 56, 56, true});
    rownorm(8192, 768, false);
    rownorm(2048, 4096, false);
    rownorm(8192, 768, true);
    rownorm(8192, 4096, true);
    // bf16 data, float parameters and statistics.
    bn_inference({32, 64, 56, 56, false}, Dt::bf16);
    bn_inference({32, 64, 56, 56, true}, Dt::bf16);
    rownorm(8192, 768, false, Dt::bf16);
    rownorm(2048, 4096, false, Dt::bf16);
    rownorm(8192, 768, true, Dt::bf16);
    groupnorm(8, 256, 32, 32, 32);
    instancenorm(8, 64, 64, 64);
    dropout(size_t(1) << 24, 0.1f);
    dropout(size_t(1) << 24, 0.5f);
    nk_context_destroy(g_ctx);
    return 0;
}
