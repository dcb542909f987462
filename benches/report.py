#!/usr/bin/env python3
"""Summarize the batch norm benchmarks as markdown tables.

Run and summarize:

    cargo bench --bench batchnorm && python3 benches/report.py

Reads criterion's results (`<criterion dir>/<group>/<function>/<value>/new/benchmark.json` and
`estimates.json`; median point estimates) for the groups of `benches/batchnorm.rs` (named
`bn_<layout>_<dims>`) and prints one table per group: operation, shape, layout, ISA, threads,
median time, GB/s of minimal traffic (read x once, write y once; 1 GB = 10^9 bytes), the ratio to
the single-thread copy of the same group (copy time / time: 1.00 = copy speed, higher = faster),
and for training (and its two halves, `moments` and `from_moments`) the time ratio to inference
at the same ISA and thread count. Then a check of the targets.

The criterion directory is, in order: the first argument, $CRITERION_HOME,
$CARGO_TARGET_DIR/criterion, or target/criterion next to this script's parent. Python 3 standard
library only.
"""

import json
import os
import sys
import time
from pathlib import Path

GROUP_PREFIX = "bn_"
LAYOUTS = {"nchw": "NCS (NCHW)", "nhwc": "NSC (NHWC)", "nc": "NCS, spatial 1"}
# Most capable first: the "default" configuration of a group is its best ISA on 2 threads.
ISA_ORDER = ["avx512", "avx2", "neon", "portable"]
OPERATION_ORDER = [
    "copy",
    "scale_loop",
    "inference",
    "inference_c_null_ctx",
    "training",
    "training_biased_var",
    "moments",
    "from_moments",
]
# Targets of the issue on the 2-core reference machine.
INFERENCE_VS_COPY = 0.85
TRAINING_VS_INFERENCE = 1.4
TINY_LATENCY_NS = 1000.0
TRAINING_TARGET_GROUPS = ("bn_nchw_32x64x56x56", "bn_nhwc_32x64x56x56")
# Results of one group measured further apart than this are flagged (a filtered run can leave
# older results next to newer ones).
STALE_SPREAD_S = 15 * 60
# Backward groups (`bnbwd_<layout>_<dims>`): the backward within this factor of the time of one
# pass over its minimal traffic (`three_streams`: read x and dy, write dx, one thread).
BACKWARD_GROUP_PREFIX = "bnbwd_"
BACKWARD_VS_THREE_STREAMS = 2.0


def criterion_dir():
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    if os.environ.get("CRITERION_HOME"):
        return Path(os.environ["CRITERION_HOME"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "criterion"
    return Path(__file__).resolve().parent.parent / "target" / "criterion"


def parse_config(value):
    """`avx2_t2` -> ("avx2", 2); `t1` (a copy) -> ("-", 1)."""
    isa, sep, threads = value.rpartition("_t")
    if not sep:
        isa, threads = "-", value[1:] if value.startswith("t") else value
    try:
        return isa, int(threads)
    except ValueError:
        return value, 0


def parse_group(group):
    """`bn_nchw_32x64x56x56` -> ("(32,64,56,56)", "NCS (NCHW)", elements)."""
    _, layout, dims = group.split("_", 2)
    sizes = [int(d) for d in dims.split("x")]
    elements = 1
    for d in sizes:
        elements *= d
    shape = "(" + ",".join(str(d) for d in sizes) + ")"
    return shape, LAYOUTS.get(layout, layout), elements


def load(root, prefix=GROUP_PREFIX):
    rows = []
    for bench in sorted(root.glob("*/**/new/benchmark.json")):
        meta = json.loads(bench.read_text())
        group = meta.get("group_id", "")
        if not group.startswith(prefix):
            continue
        estimates_path = bench.parent / "estimates.json"
        if not estimates_path.exists():
            continue
        estimates = json.loads(estimates_path.read_text())
        function = meta.get("function_id") or ""
        value = meta.get("value_str") or ""
        if not value and "/" in function:
            function, value = function.split("/", 1)
        isa, threads = parse_config(value)
        throughput = meta.get("throughput") or {}
        nbytes = throughput.get("Bytes") or throughput.get("BytesDecimal")
        rows.append(
            {
                "group": group,
                "op": function,
                "isa": isa,
                "threads": threads,
                "ns": estimates["median"]["point_estimate"],
                "bytes": nbytes,
                "mtime": estimates_path.stat().st_mtime,
            }
        )
    # Keep the newest result per benchmark (ids renamed between runs leave older directories).
    newest = {}
    for r in rows:
        key = (r["group"], r["op"], r["isa"], r["threads"])
        if key not in newest or r["mtime"] > newest[key]["mtime"]:
            newest[key] = r
    return list(newest.values())


def fmt_time(ns):
    if ns < 1e3:
        return f"{ns:.1f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns / 1e6:.3f} ms"


def fmt_ratio(x):
    return f"{x:.2f}" if x >= 0.1 else f"{x:.4f}"


def fmt_bytes(n):
    if n < 1e6:
        return f"{n / 1e3:.3g} kB"
    return f"{n / 1e6:.3g} MB"


def gbps(row):
    return row["bytes"] / row["ns"] if row["bytes"] else None


def sort_key(row):
    op = OPERATION_ORDER.index(row["op"]) if row["op"] in OPERATION_ORDER else len(OPERATION_ORDER)
    isa = ISA_ORDER.index(row["isa"]) if row["isa"] in ISA_ORDER else -1
    return (op, isa, row["threads"])


def find(rows, op, isa=None, threads=None):
    for r in rows:
        if r["op"] == op and (isa is None or r["isa"] == isa) and (threads is None or r["threads"] == threads):
            return r
    return None


def default_config(rows):
    """The best ISA present in the group, on 2 threads."""
    for isa in ISA_ORDER:
        if find(rows, "inference", isa, 2):
            return isa, 2
    return None, None


def group_order(group):
    order = [
        "bn_nchw_32x64x56x56",
        "bn_nhwc_32x64x56x56",
        "bn_nchw_8x2048x7x7",
        "bn_nchw_1x64x112x112",
        "bn_nc_4096x1024",
        "bn_nchw_1x64x1x1",
    ]
    return (order.index(group) if group in order else len(order), group)


def print_group(group, rows):
    shape, layout, elements = parse_group(group)
    copy = find(rows, "copy", threads=1)
    size = fmt_bytes(4 * elements)
    print(f"### `{group}`: {shape}, {layout}, {elements} elements ({size} per tensor)\n")
    spread = max(r["mtime"] for r in rows) - min(r["mtime"] for r in rows)
    if spread > STALE_SPREAD_S:
        print(f"> Results of this group were measured {spread / 60:.0f} minutes apart: not one run.\n")
    print("| operation | shape | layout | ISA | threads | median time | GB/s | vs copy | train/inf |")
    print("|---|---|---|---|---|---:|---:|---:|---:|")
    for r in sorted(rows, key=sort_key):
        rate = gbps(r)
        vs_copy = fmt_ratio(copy["ns"] / r["ns"]) if copy else "-"
        ratio = "-"
        if r["op"].startswith("training") or r["op"] in ("moments", "from_moments"):
            inf = find(rows, "inference", r["isa"], r["threads"])
            if inf:
                ratio = f"{r['ns'] / inf['ns']:.2f}x"
        rate = f"{rate:.2f}" if rate is not None else "-"
        print(
            f"| {r['op']} | {shape} | {layout} | {r['isa']} | {r['threads']} "
            f"| {fmt_time(r['ns'])} | {rate} | {vs_copy} | {ratio} |"
        )
    print()


def print_targets(groups):
    print("### Targets (default configuration: best ISA present, 2 threads)\n")
    print("| target | shape | measured | met |")
    print("|---|---|---|---|")
    for group in sorted(groups, key=group_order):
        rows = groups[group]
        shape, layout, elements = parse_group(group)
        label = f"{shape} {layout}"
        isa, threads = default_config(rows)
        copy = find(rows, "copy", threads=1)
        inf = find(rows, "inference", isa, threads) if isa else None
        if elements > 1024:
            if copy and inf:
                ratio = copy["ns"] / inf["ns"]
                print(
                    f"| inference >= {INFERENCE_VS_COPY:.0%} of copy throughput | {label} "
                    f"| {ratio:.0%} ({isa}, {threads} threads) | {'yes' if ratio >= INFERENCE_VS_COPY else 'NO'} |"
                )
        else:
            for op in ("inference", "inference_c_null_ctx"):
                for r in (x for x in rows if x["op"] == op):
                    ok = r["ns"] < TINY_LATENCY_NS
                    print(
                        f"| {op} under {TINY_LATENCY_NS:.0f} ns | {label} "
                        f"| {fmt_time(r['ns'])} ({r['isa']}, {r['threads']} threads) | {'yes' if ok else 'NO'} |"
                    )
        if group in TRAINING_TARGET_GROUPS:
            train = find(rows, "training", isa, threads) if isa else None
            if train and inf:
                ratio = train["ns"] / inf["ns"]
                print(
                    f"| training <= {TRAINING_VS_INFERENCE}x inference time | {label} "
                    f"| {ratio:.2f}x ({isa}, {threads} threads) | {'yes' if ratio <= TRAINING_VS_INFERENCE else 'NO'} |"
                )
    print()


def display(path):
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return path.name


def print_backward(rows):
    """Tables and the target of the backward groups."""
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    print("## Batch norm backward benchmarks\n")
    print(
        "GB/s counts the minimal traffic, 3 x 4 bytes per element (read x and dy, write dx; "
        "2 x 4 for `copy` and `backward_reduce`); `vs 3 streams` is the row's time over the time "
        "of `three_streams` (dx = x + dy, 1 thread, same group).\n"
    )
    targets = []
    for group in sorted(groups):
        g = groups[group]
        shape, layout, _ = parse_group(group)
        ref = find(g, "three_streams", threads=1)
        print(f"### `{group}`: {shape}, {layout}\n")
        print("| operation | ISA | threads | median time | GB/s | vs 3 streams |")
        print("|---|---|---|---:|---:|---:|")
        for r in sorted(g, key=lambda r: (r["op"], r["isa"], r["threads"])):
            rate = gbps(r)
            rate = f"{rate:.2f}" if rate is not None else "-"
            vs = f"{r['ns'] / ref['ns']:.2f}x" if ref else "-"
            print(f"| {r['op']} | {r['isa']} | {r['threads']} | {fmt_time(r['ns'])} | {rate} | {vs} |")
        print()
        for isa in ISA_ORDER:
            b = find(g, "backward", isa, 2)
            if b and ref:
                targets.append((f"{shape} {layout}", b["ns"] / ref["ns"], isa))
                break
    if targets:
        print("| target | shape | measured | met |")
        print("|---|---|---|---|")
        for label, ratio, isa in targets:
            ok = "yes" if ratio <= BACKWARD_VS_THREE_STREAMS else "NO"
            print(
                f"| backward <= {BACKWARD_VS_THREE_STREAMS}x a three-stream pass | {label} "
                f"| {ratio:.2f}x ({isa}, 2 threads) | {ok} |"
            )
        print()


def main():
    root = criterion_dir()
    backward_rows = load(root, BACKWARD_GROUP_PREFIX)
    rows = load(root)
    if backward_rows and not rows:
        print_backward(backward_rows)
        return
    if not rows:
        sys.exit(f"no batch norm results under {root}: run `cargo bench --bench batchnorm` first")
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    newest = max(r["mtime"] for r in rows)
    print("## Batch norm forward benchmarks\n")
    print(
        f"Criterion medians from `{display(root)}` (newest result {time.strftime('%Y-%m-%d %H:%M', time.localtime(newest))}). "
        "GB/s counts the minimal traffic, 2 x 4 bytes per element (4 for `moments`, which only "
        "reads); `vs copy` is the copy's time (`copy`, 1 thread, same group) over the row's time; "
        "`train/inf` is the row's time over inference time at the same ISA and threads "
        "(`moments` and `from_moments` are the two halves of a training forward).\n"
    )
    for group in sorted(groups, key=group_order):
        print_group(group, groups[group])
    print_targets(groups)
    if backward_rows:
        print_backward(backward_rows)


if __name__ == "__main__":
    main()
