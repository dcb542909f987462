"""ONNX Runtime (CPU) on the workloads of native.cpp, printing the same JSON lines.

    python ort_bench.py THREADS BUDGET_MS [FILTER]

Each workload is a model of one node, built with the `onnx` package (default domain, opset 23),
run by an InferenceSession on the CPU execution provider with intra_op_num_threads = THREADS,
inter_op_num_threads = 1, sequential execution and the default graph optimization level. Its
parameters (scale, bias, running statistics) are initializers, as in a deployed model; dropout's
ratio and training_mode are inputs, as in a training graph. The inputs and every output are
bound once with IOBinding to OrtValues over preallocated arrays, so a timed call
(run_with_iobinding) neither allocates its outputs nor copies its inputs or outputs; what it
does allocate is ORT's own (the intermediates of an expanded function). Each workload is the
median of repeated calls within BUDGET_MS after two warm-up calls, as in the other programs. All
calls are made from Python, so tiny calls include the interpreter's and ORT's per-run overhead,
as an ORT user from Python pays it.

Operators: BatchNormalization-15 (inference; training_mode=1 for training, which computes the
batch statistics and writes the running ones), LayerNormalization-17, RMSNormalization-23,
GroupNormalization-21 (ORT's CPU provider has no kernel for it, nor for the contrib GroupNorm:
the session runs the ONNX function's expansion into elementwise and reduction nodes, which is
what an ORT user gets), InstanceNormalization, Dropout with ratio and training_mode = true
inputs (a bool mask, one byte per element). BatchNormalization takes channels in dimension 1
only, so the NHWC workloads run on the same bytes viewed as (N*H*W, C), which is the same
normalization.

Not covered: the batch-norm and dropout backward workloads, whose gradient operators
(BatchNormalizationGrad, DropoutGrad) exist only in ORT's training builds, not in the
onnxruntime package. Of the `_bf16` workloads (bfloat16 data), only layer norm runs: ORT's CPU
provider has no bfloat16 kernel for BatchNormalization, and RMSNormalization's expansion needs a
bfloat16 Mul it lacks. LayerNormalization ties its scale and bias to the data's type, so they
are bfloat16 there (normkit and the other peers take float parameters). bfloat16 arrays come from
ml_dtypes (a dependency of onnx) and are bound as BFLOAT16 OrtValues over their bits. native.cpp
has no fused residual-add workloads, so neither has this (ORT's SkipLayerNormalization and
SkipSimplifiedLayerNormalization would be the fused peers).

Accuracy: max |y - y_ref| on 10000 + N(0,1) with a float64 reference from the same float input,
as in native.cpp.
"""

import functools
import json
import sys

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import pycommon
from pycommon import bn_name, latency_ns, median_ns

EPS = 1e-5
MOMENTUM = 0.1  # PyTorch's convention; ONNX's momentum is 1 - this
OPSET = 23
LIB = "onnxruntime"


emit = functools.partial(pycommon.emit, LIB)
emit_err = functools.partial(pycommon.emit_err, LIB)


def randn(shape, offset=0.0, seed=1):
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return x + np.float32(offset) if offset else x


ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.bool_): TensorProto.BOOL,
             np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16}


def ortvalue(v):
    """An OrtValue over the array `v` (bfloat16, which ORT's numpy bridge does not know, as
    BFLOAT16 over its bits)."""
    if v.dtype == ml_dtypes.bfloat16:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(v.view(np.uint16),
                                                               TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(v)


class Model:
    """A one-node model: `inputs` and `outputs` map names to arrays (outputs preallocated),
    `params` to initializers."""

    def __init__(self, threads, op, inputs, outputs, params=None, **attrs):
        params = params or {}
        node = helper.make_node(op, list(inputs) + list(params), list(outputs), **attrs)
        graph = helper.make_graph(
            [node], op,
            [helper.make_tensor_value_info(k, ONNX_TYPE[v.dtype], v.shape)
             for k, v in inputs.items()],
            [helper.make_tensor_value_info(k, ONNX_TYPE[v.dtype], v.shape)
             for k, v in outputs.items()],
            initializer=[numpy_helper.from_array(v, k) for k, v in params.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        onnx.checker.check_model(model)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(model.SerializeToString(), so,
                                         providers=["CPUExecutionProvider"])
        self.outputs = outputs
        self.io = self.sess.io_binding()
        self.values = []  # the OrtValues stay alive as long as the binding
        for k, v in inputs.items():
            self.values.append(ortvalue(v))
            self.io.bind_ortvalue_input(k, self.values[-1])
        for k, v in outputs.items():
            self.values.append(ortvalue(v))
            self.io.bind_ortvalue_output(k, self.values[-1])

    def __call__(self):
        self.sess.run_with_iobinding(self.io)


def bn_params(c, training=False):
    return {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32),
            "input_mean": np.zeros(c, np.float32), "input_var": np.ones(c, np.float32)}


def batchnorm(threads, x, training, params=None):
    """BatchNormalization on x (N, C, ...) or (N, C); outputs preallocated."""
    c = x.shape[1]
    params = params or bn_params(c)
    outputs = {"Y": np.empty_like(x)}
    attrs = {"epsilon": EPS}
    if training:
        outputs.update(running_mean=np.empty(c, np.float32),
                       running_var=np.empty(c, np.float32))
        attrs.update(training_mode=1, momentum=1.0 - MOMENTUM)
    return Model(threads, "BatchNormalization", {"X": x}, outputs, params, **attrs)


def layernorm(threads, x, beta=True):
    cols = x.shape[-1]
    params = {"scale": np.ones(cols, x.dtype)}
    if beta:
        params["B"] = np.zeros(cols, x.dtype)
    return Model(threads, "LayerNormalization", {"X": x}, {"Y": np.empty_like(x)}, params,
                 axis=-1, epsilon=EPS)


def main():
    threads = int(sys.argv[1])
    budget = float(sys.argv[2])
    filt = sys.argv[3] if len(sys.argv) > 3 else ""
    print(json.dumps({"meta": LIB, "version": ort.__version__}), flush=True)

    def wanted(w):
        return filt in w

    def timed(w, make, nbytes):
        if wanted(w):
            emit(w, median_ns(make(), budget), nbytes, threads)

    if wanted("accuracy"):
        accuracy(threads)
    if wanted("tiny_bn_infer_1x64x1x1"):
        m = batchnorm(threads, randn((1, 64, 1, 1)), False)
        emit("tiny_bn_infer_1x64x1x1", latency_ns(m, budget), 512, threads)
    if wanted("tiny_ln_1x768"):
        m = layernorm(threads, randn((1, 768)))
        emit("tiny_ln_1x768", latency_ns(m, budget), 6144, threads)

    shapes = [((32, 64, 56, 56), False), ((32, 256, 14, 14), False), ((8, 2048, 7, 7), False),
              ((1, 64, 112, 112), False), ((32, 64, 56, 56), True), ((32, 256, 14, 14), True),
              ((8, 2048, 7, 7), True), ((1, 64, 112, 112), True), ((4096, 1024), False)]
    for shape, nhwc in shapes:
        wt, wi = bn_name("bn_train", shape, nhwc), bn_name("bn_infer", shape, nhwc)
        if not (wanted(wt) or wanted(wi)):
            continue
        if nhwc:
            n, c, h, w = shape
            x = randn((n * h * w, c))
        else:
            x = randn(shape)
        nbytes = 8 * x.size
        timed(wt, lambda: batchnorm(threads, x, True), nbytes)
        timed(wi, lambda: batchnorm(threads, x, False), nbytes)
        del x

    for rows, cols in ((8192, 768), (2048, 4096)):
        w = f"ln_fwd_{rows}x{cols}"
        if wanted(w):
            x = randn((rows, cols))
            timed(w, lambda: layernorm(threads, x), 8 * x.size)
    for rows, cols in ((8192, 768), (8192, 4096)):
        w = f"rms_fwd_{rows}x{cols}"
        if wanted(w):
            x = randn((rows, cols))
            timed(w, lambda: Model(
                threads, "RMSNormalization", {"X": x}, {"Y": np.empty_like(x)},
                {"scale": np.ones(cols, np.float32)}, axis=-1, epsilon=EPS), 8 * x.size)
    for rows, cols in ((8192, 768), (2048, 4096)):
        w = f"ln_fwd_bf16_{rows}x{cols}"
        if wanted(w):
            x = randn((rows, cols)).astype(ml_dtypes.bfloat16)
            timed(w, lambda: layernorm(threads, x), 4 * x.size)
    if wanted("gn_fwd_nchw_8x256x32x32_g32"):
        x = randn((8, 256, 32, 32))
        timed("gn_fwd_nchw_8x256x32x32_g32", lambda: Model(
            threads, "GroupNormalization", {"X": x}, {"Y": np.empty_like(x)},
            {"scale": np.ones(256, np.float32), "bias": np.zeros(256, np.float32)},
            num_groups=32, epsilon=EPS), 8 * x.size)
    if wanted("in_fwd_nchw_8x64x64x64"):
        x = randn((8, 64, 64, 64))
        timed("in_fwd_nchw_8x64x64x64", lambda: Model(
            threads, "InstanceNormalization", {"X": x}, {"Y": np.empty_like(x)},
            {"scale": np.ones(64, np.float32), "B": np.zeros(64, np.float32)},
            epsilon=EPS), 8 * x.size)

    n = 1 << 24
    for p in (0.1, 0.5):
        w = f"dropout_p{p:g}_{n}_fwd"
        if not wanted(w):
            continue
        x = randn((n,))
        timed(w, lambda: Model(
            threads, "Dropout",
            {"data": x, "ratio": np.array(p, np.float32), "training_mode": np.array(True)},
            {"output": np.empty_like(x), "mask": np.empty(n, np.bool_)}), 8 * n + n / 8)
        del x


def accuracy(threads):
    # Same shapes as native.cpp: batch norm (32,64,16,16) NCHW, layer norm (256,768).
    x = randn((32, 64, 16, 16), offset=10000.0, seed=11)
    xd = x.astype(np.float64)
    mean = xd.mean(axis=(0, 2, 3), keepdims=True)
    var = xd.var(axis=(0, 2, 3), keepdims=True)
    m = batchnorm(threads, x, True)
    m()
    y = m.outputs["Y"]
    emit_err("accuracy_bn_train", np.abs(y - (xd - mean) / np.sqrt(var + EPS)).max())
    fm, fv = mean.astype(np.float32), var.astype(np.float32)
    params = dict(bn_params(64), input_mean=fm.ravel(), input_var=fv.ravel())
    m = batchnorm(threads, x, False, params)
    m()
    y = m.outputs["Y"]
    ref = (xd - fm.astype(np.float64)) / np.sqrt(fv.astype(np.float64)
                                                 + np.float64(np.float32(EPS)))
    emit_err("accuracy_bn_infer", np.abs(y - ref).max())
    xl = np.ascontiguousarray(x.reshape(-1)[: 256 * 768].reshape(256, 768))
    xld = xl.astype(np.float64)
    mu = xld.mean(axis=1, keepdims=True)
    v = xld.var(axis=1, keepdims=True)
    m = layernorm(threads, xl)
    m()
    emit_err("accuracy_ln", np.abs(m.outputs["Y"] - (xld - mu) / np.sqrt(v + EPS)).max())


if __name__ == "__main__":
    main()
