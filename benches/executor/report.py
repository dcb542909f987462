#!/usr/bin/env python3
"""Markdown table from the JSON lines of engine.c (stdlib only).

    report.py RAW.jsonl

Each mode's time is the median over all rounds (of every process) of the per-round medians.
Checks that modes (a), (b) and (c) produced the same output hash for each workload.
"""
import json
import statistics
import sys
from collections import defaultdict

LABELS = {
    "bn_train_nchw": "BN training NCHW (32,64,56,56)",
    "bn_train_nhwc": "BN training NHWC (32,64,56,56)",
    "bn_infer_nchw": "BN inference NCHW (32,64,56,56)",
    "layernorm": "layer norm (8192,768)",
    "groupnorm": "group norm (8,256,32,32), 32 groups",
    "dropout": "dropout 16M floats, p=0.1, mask",
}
ISA = {0: "auto", 1: "portable", 2: "AVX2", 3: "AVX-512", 4: "NEON"}
TARGET = 1.10  # (b) within 10% of (c) at 2 threads


def main(path):
    times = defaultdict(list)  # (workload, T, mode) -> round medians (ms)
    hashes = defaultdict(set)  # workload -> hashes
    nbytes, order, infos = {}, [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "info":
                infos.append(r)
            elif r["kind"] == "hash":
                hashes[r["workload"]].add(r["hash"])
            else:
                key = (r["workload"], r["T"])
                if key not in order:
                    order.append(key)
                times[key + (r["mode"],)].append(r["ms"])
                nbytes[r["workload"]] = r["bytes"]

    seen = set()
    for i in infos:
        if "region_us" in i:
            print(f"- short region before each call ({i['mode']}, T={i['T']}): "
                  f"{i['region_us']:.1f} us (median)")
        elif "threads" in i:
            print(f"- threads of the {i['mode']} process at its end: {i['threads']}")
        elif "schedule" in i and "schedule" not in seen:
            seen.add("schedule")
            print(f"- (b) executor: `#pragma omp parallel for schedule({i['schedule']}"
                  f"{', %d' % i['chunk'] if i['chunk'] > 0 else ''})`")
        elif "isa" in i and "isa" not in seen:
            seen.add("isa")
            print(f"- normkit ISA: {ISA.get(i['isa'], i['isa'])}")
    bad = [w for w, h in hashes.items() if len(h) != 1]
    print(f"- outputs of (a), (b), (c): "
          f"{'bitwise equal (hash) on every workload' if not bad else 'DIFFER on ' + ', '.join(bad)}")
    print()

    def med(key):
        v = times.get(key)
        return statistics.median(v) if v else None

    def fmt(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    print("| workload | T | (c) alone ms | (a) own pool in OpenMP process ms "
          "| (b) executor in OpenMP process ms | (b)/(c) | GB/s of (b) | copy ratio |")
    print("|---|---|---|---|---|---|---|---|")
    missed, rounds = [], set()
    order.sort(key=lambda k: (list(LABELS).index(k[0]) if k[0] in LABELS else 99, k[1]))
    for w, t in order:
        a, b, c, cp = (med((w, t, m)) for m in ("a", "b", "c", "copy"))
        rounds.update(len(times.get((w, t, m), [])) for m in ("a", "b", "c"))
        ratio = b / c if b and c else None
        gbs = nbytes[w] / (b * 1e-3) / 1e9 if b else None
        copy_ratio = cp / b if b and cp else None  # GB/s of (b) / GB/s of the copy
        if t == 2 and (ratio is None or ratio > TARGET):
            missed.append(w)
        print(f"| {LABELS.get(w, w)} | {t} | {fmt(c)} | {fmt(a)} | {fmt(b)} | {fmt(ratio, '.2f')} "
              f"| {fmt(gbs, '.1f')} | {fmt(copy_ratio, '.2f')} |")
    print()
    print(f"Rounds per mode: {', '.join(map(str, sorted(rounds)))}. GB/s = minimal traffic "
          "(inputs read once, outputs written once) / median time; copy ratio = GB/s of (b) / "
          "GB/s of a memcpy of the same traffic on the same T OpenMP threads, same run.")
    n2 = sum(1 for _, t in order if t == 2)
    print(f"Target (b)/(c) <= {TARGET:.2f} at T=2: met on {n2 - len(missed)} of {n2}"
          + (f"; missed: {', '.join(missed)}" if missed else ""))


if __name__ == "__main__":
    main(sys.argv[1])
