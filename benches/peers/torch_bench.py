"""PyTorch (CPU) on the workloads of native.cpp, printing the same JSON lines.

    python torch_bench.py THREADS BUDGET_MS [FILTER]

Each workload is the median of repeated calls within BUDGET_MS after two warm-up calls, on
torch.set_num_threads(THREADS), under torch.inference_mode() (no autograd bookkeeping). The ATen
operators are called as a PyTorch user's training step reaches them: F.batch_norm (training
updates the running statistics), aten.native_batch_norm_backward, F.layer_norm, F.rms_norm,
F.group_norm, F.instance_norm, aten.native_dropout / native_dropout_backward (a bool mask, one
byte per element). Tiny calls are timed from Python, so they include the interpreter's dispatch,
as a PyTorch user pays it. Accuracy: max |y - y_ref| on 10000 + N(0,1) with a float64 reference
from the same float input, as in native.cpp. The `_bf16` workloads run the same operators on
bfloat16 tensors (the float data rounded) with float parameters and running statistics, as
normkit's `_bf16` functions take them (PyTorch's CPU kernels accept that mix and return bfloat16).
"""

import functools
import json
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import pycommon
from pycommon import bn_name, latency_ns, median_ns

EPS = 1e-5
MOMENTUM = 0.1


emit = functools.partial(pycommon.emit, "pytorch")
emit_err = functools.partial(pycommon.emit_err, "pytorch")


def tensor(shape, nhwc=False, offset=0.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g) + offset
    return t.contiguous(memory_format=torch.channels_last) if nhwc else t


def main():
    threads = int(sys.argv[1])
    budget = float(sys.argv[2])
    filt = sys.argv[3] if len(sys.argv) > 3 else ""
    torch.set_num_threads(threads)
    print(json.dumps({"meta": "pytorch", "version": torch.__version__}), flush=True)

    def wanted(w):
        return filt in w

    def timed(w, f, nbytes):
        if wanted(w):
            emit(w, median_ns(f, budget), nbytes, threads)

    with torch.inference_mode():
        if wanted("accuracy"):
            accuracy()
        if wanted("tiny_bn_infer_1x64x1x1"):
            x, g, b, m, v = (torch.randn(1, 64, 1, 1), torch.ones(64), torch.zeros(64),
                             torch.zeros(64), torch.ones(64))
            emit("tiny_bn_infer_1x64x1x1",
                 latency_ns(lambda: F.batch_norm(x, m, v, g, b, False, MOMENTUM, EPS), budget),
                 512, threads)
        if wanted("tiny_ln_1x768"):
            x, g, b = torch.randn(1, 768), torch.ones(768), torch.zeros(768)
            emit("tiny_ln_1x768", latency_ns(lambda: F.layer_norm(x, (768,), g, b, EPS), budget),
                 6144, threads)

        shapes = [((32, 64, 56, 56), False), ((32, 256, 14, 14), False), ((8, 2048, 7, 7), False),
                  ((1, 64, 112, 112), False), ((32, 64, 56, 56), True), ((32, 256, 14, 14), True),
                  ((8, 2048, 7, 7), True), ((1, 64, 112, 112), True), ((4096, 1024), False)]
        for shape, nhwc in shapes:
            wt, wi = bn_name("bn_train", shape, nhwc), bn_name("bn_infer", shape, nhwc)
            if not (wanted(wt) or wanted(wi)):
                continue
            c = shape[1]
            x = tensor(shape, nhwc)
            g, b, rm, rv = torch.ones(c), torch.zeros(c), torch.zeros(c), torch.ones(c)
            nbytes = 8 * x.numel()
            timed(wt, lambda: F.batch_norm(x, rm, rv, g, b, True, MOMENTUM, EPS), nbytes)
            timed(wi, lambda: F.batch_norm(x, rm, rv, g, b, False, MOMENTUM, EPS), nbytes)
            del x

        for nhwc in (False, True):
            shape = (32, 64, 56, 56)
            w = bn_name("bn_bwd", shape, nhwc)
            if not wanted(w):
                continue
            x, dy = tensor(shape, nhwc), tensor(shape, nhwc, seed=7)
            g = torch.ones(64)
            _, sm, si = torch.ops.aten.native_batch_norm(x, g, torch.zeros(64), None, None, True,
                                                         MOMENTUM, EPS)
            timed(w, lambda: torch.ops.aten.native_batch_norm_backward(
                dy, x, g, None, None, sm, si, True, EPS, [True, True, True]), 12 * x.numel())
            del x, dy

        for rows, cols in ((8192, 768), (2048, 4096)):
            x, g, b = tensor((rows, cols)), torch.ones(cols), torch.zeros(cols)
            timed(f"ln_fwd_{rows}x{cols}", lambda: F.layer_norm(x, (cols,), g, b, EPS),
                  8 * x.numel())
        for rows, cols in ((8192, 768), (8192, 4096)):
            x, g = tensor((rows, cols)), torch.ones(cols)
            timed(f"rms_fwd_{rows}x{cols}", lambda: F.rms_norm(x, (cols,), g, EPS),
                  8 * x.numel())

        # bf16 data, float parameters and statistics.
        bf16 = torch.bfloat16
        for nhwc in (False, True):
            shape = (32, 64, 56, 56)
            w = bn_name("bn_infer_bf16", shape, nhwc)
            if wanted(w):
                x = tensor(shape, nhwc).to(bf16)
                g, b, rm, rv = torch.ones(64), torch.zeros(64), torch.zeros(64), torch.ones(64)
                timed(w, lambda: F.batch_norm(x, rm, rv, g, b, False, MOMENTUM, EPS),
                      4 * x.numel())
                del x
        for rows, cols in ((8192, 768), (2048, 4096)):
            x, g, b = tensor((rows, cols)).to(bf16), torch.ones(cols), torch.zeros(cols)
            timed(f"ln_fwd_bf16_{rows}x{cols}", lambda: F.layer_norm(x, (cols,), g, b, EPS),
                  4 * x.numel())
        x, g = tensor((8192, 768)).to(bf16), torch.ones(768)
        # F.rms_norm warns that the mix of types takes its unfused implementation: that is
        # the implementation a PyTorch user with float weights gets.
        warnings.filterwarnings("ignore", message="Mismatch dtype")
        timed("rms_fwd_bf16_8192x768", lambda: F.rms_norm(x, (768,), g, EPS), 4 * x.numel())
        x, g, b = tensor((8, 256, 32, 32)), torch.ones(256), torch.zeros(256)
        timed("gn_fwd_nchw_8x256x32x32_g32", lambda: F.group_norm(x, 32, g, b, EPS),
              8 * x.numel())
        x, g, b = tensor((8, 64, 64, 64)), torch.ones(64), torch.zeros(64)
        timed("in_fwd_nchw_8x64x64x64",
              lambda: F.instance_norm(x, weight=g, bias=b, use_input_stats=True, eps=EPS),
              8 * x.numel())
        del x

        n = 1 << 24
        x = tensor((n,))
        for p in (0.1, 0.5):
            base = f"dropout_p{p:g}_{n}"
            nbytes = 8 * n + n / 8
            timed(base + "_fwd", lambda: torch.ops.aten.native_dropout(x, p, True), nbytes)
            _, mask = torch.ops.aten.native_dropout(x, p, True)
            timed(base + "_bwd",
                  lambda: torch.ops.aten.native_dropout_backward(x, mask, 1.0 / (1.0 - p)), nbytes)


def accuracy():
    # Same shapes as native.cpp: batch norm (32,64,16,16) NCHW, layer norm (256,768).
    x = tensor((32, 64, 16, 16), offset=10000.0, seed=11)
    xd = x.double().numpy()
    mean = xd.mean(axis=(0, 2, 3), keepdims=True)
    var = xd.var(axis=(0, 2, 3), keepdims=True)
    ones, zeros = torch.ones(64), torch.zeros(64)
    y = F.batch_norm(x, None, None, ones, zeros, True, MOMENTUM, EPS).numpy()
    emit_err("accuracy_bn_train", np.abs(y - (xd - mean) / np.sqrt(var + EPS)).max())
    fm, fv = mean.astype(np.float32), var.astype(np.float32)
    y = F.batch_norm(x, torch.from_numpy(fm.ravel()), torch.from_numpy(fv.ravel()), ones, zeros,
                     False, MOMENTUM, EPS).numpy()
    ref = (xd - fm.astype(np.float64)) / np.sqrt(fv.astype(np.float64) + np.float64(np.float32(EPS)))
    emit_err("accuracy_bn_infer", np.abs(y - ref).max())
    xl = x.reshape(-1)[: 256 * 768].reshape(256, 768)
    xld = xl.double().numpy()
    m = xld.mean(axis=1, keepdims=True)
    v = xld.var(axis=1, keepdims=True)
    y = F.layer_norm(xl, (768,), torch.ones(768), torch.zeros(768), EPS).numpy()
    emit_err("accuracy_ln", np.abs(y - (xld - m) / np.sqrt(v + EPS)).max())


if __name__ == "__main__":
    main()
