"""What the Python peer programs (torch_bench.py, ort_bench.py) share: the JSON lines they print
for report.py, the two ways they time a call (as native.cpp does), and the workload names."""

import json
import time


def emit(lib, workload, ns, nbytes, threads):
    print(json.dumps({"workload": workload, "lib": lib, "threads": threads,
                      "ns": round(ns, 1), "bytes": nbytes}), flush=True)


def emit_err(lib, workload, err):
    print(json.dumps({"workload": workload, "lib": lib, "max_err": float(f"{err:.3e}")}),
          flush=True)


def _median_per_call(f, budget_ms, warmup, batch, least, most):
    """Median over timed batches of `batch` calls of `f`, per call: `warmup` calls first, then
    batches until the budget is spent (at least `least`, at most `most`)."""
    for _ in range(warmup):
        f()
    times = []
    start = time.perf_counter_ns()
    while len(times) < least or (len(times) < most
                                 and time.perf_counter_ns() - start < budget_ms * 1e6):
        a = time.perf_counter_ns()
        for _ in range(batch):
            f()
        times.append((time.perf_counter_ns() - a) / batch)
    times.sort()
    return times[len(times) // 2]


def median_ns(f, budget_ms):
    """Median time of one call of `f`: two warm-up calls, then repeated calls until the budget
    is spent (at least 5, at most 2000)."""
    return _median_per_call(f, budget_ms, warmup=2, batch=1, least=5, most=2000)


def latency_ns(f, budget_ms):
    """Latency of a tiny call: the median over batches of 256 calls, per call."""
    return _median_per_call(f, budget_ms, warmup=1000, batch=256, least=50, most=5000)


def bn_name(op, shape, nhwc):
    if len(shape) == 2:
        return f"{op}_nc_{shape[0]}x{shape[1]}"
    return f"{op}_{'nhwc' if nhwc else 'nchw'}_{'x'.join(map(str, shape))}"
