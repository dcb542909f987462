"""Tables and a plot from the peer comparison's JSON lines (see run.sh).

    python report.py RAW.jsonl [--markdown OUT.md] [--plot OUT.png] [--readme README.md]
                     [--headline WORKLOAD,WORKLOAD,...]

Every (workload, library, threads) was timed once per round as a median of many calls; the
report takes the median over rounds. GB/s is the workload's minimal traffic (bytes read and
written once; 1 GB = 10^9 bytes) over the time; "of copy" is the copy time of the same bytes in
the same run over the library's time (100% = as fast as a copy). "vs oneDNN" and "vs PyTorch" are
the peer's time over normkit's (2.0 = normkit twice as fast). Targets checked at 2 threads:
>= 1.2x oneDNN, >= 2x PyTorch (10x for dropout), and for working sets larger than the last-level
cache at most 1.15x the copy time. The plot needs matplotlib; the tables need only the standard
library.

Both files are rewritten only between the markers `<!-- peers-table:begin -->` and
`<!-- peers-table:end -->`, so the text around them is kept: OUT.md gets every table (a new file
is written whole), README.md the headline table, the 2-thread rows of the --headline workloads
(every workload without --headline).
"""

import argparse
import json
import os
import platform
import statistics
import time
from collections import defaultdict

LIBS = ("normkit", "onednn", "pytorch")
LIB_NAMES = {"normkit": "normkit", "onednn": "oneDNN", "pytorch": "PyTorch"}
SECTION_BEGIN = "<!-- peers-table:begin -->"
SECTION_END = "<!-- peers-table:end -->"


def load(path):
    times = defaultdict(list)  # (workload, lib, threads) -> [ns per round]
    nbytes = {}
    errors = defaultdict(list)
    meta = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if "meta" in r:
                meta[r["meta"]] = r["version"]
            elif "max_err" in r:
                errors[(r["workload"], r["lib"])].append(r["max_err"])
            else:
                times[(r["workload"], r["lib"], r["threads"])].append(r["ns"])
                nbytes[r["workload"]] = r["bytes"]
    med = {k: statistics.median(v) for k, v in times.items()}
    rounds = max((len(v) for v in times.values()), default=0)
    err = {k: max(v) for k, v in errors.items()}
    return med, nbytes, err, meta, rounds


def llc_bytes():
    """Size of the largest CPU cache, from sysfs (0 if unknown)."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in os.listdir(base):
            try:
                with open(os.path.join(base, d, "size")) as f:
                    s = f.read().strip()
            except OSError:
                continue
            mult = {"K": 1024, "M": 1024 * 1024}.get(s[-1], 1)
            best = max(best, int(s.rstrip("KM")) * mult)
    except OSError:
        pass
    return best


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt_time(ns):
    if ns is None:
        return "n/a"
    if ns < 1e4:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} us"
    return f"{ns / 1e6:.2f} ms"


def is_tiny(w):
    return w.startswith("tiny_")


def workloads_in_order(med):
    seen = []
    for (w, _, _) in med:
        if w not in seen:
            seen.append(w)
    return seen


def speedup_target(w, lib):
    if lib == "onednn":
        return 1.2
    return 10.0 if w.startswith("dropout") else 2.0


def table(med, nbytes, threads, workloads):
    rows = [
        "| workload | normkit | GB/s | of copy | oneDNN | PyTorch | vs oneDNN | vs PyTorch | copy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in workloads:
        nk = med.get((w, "normkit", threads))
        if nk is None:
            continue
        copy = med.get((w, "copy", threads))
        one = med.get((w, "onednn", threads))
        pt = med.get((w, "pytorch", threads))
        if is_tiny(w):
            gbs = of_copy = "-"
        else:
            gbs = f"{nbytes[w] / nk:.1f}"
            of_copy = f"{copy / nk * 100:.0f}%" if copy else "-"
        vs = [f"{p / nk:.2f}x" if p else "n/a" for p in (one, pt)]
        rows.append(f"| {w} | {fmt_time(nk)} | {gbs} | {of_copy} | {fmt_time(one)} | "
                    f"{fmt_time(pt)} | {vs[0]} | {vs[1]} | {fmt_time(copy) if copy else '-'} |")
    return "\n".join(rows)


def headline_table(med, nbytes, workloads):
    rows = [
        "| workload, 2 threads | normkit | GB/s | of copy | vs oneDNN | vs PyTorch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for line in table(med, nbytes, 2, workloads).splitlines()[2:]:
        c = [x.strip() for x in line.strip("|").split("|")]
        # workload, normkit, GB/s, of copy, oneDNN, PyTorch, vs oneDNN, vs PyTorch, copy
        rows.append("| " + " | ".join(c[:4] + c[6:8]) + " |")
    return "\n".join(rows)


def replace_section(path, body):
    """Replaces the text between the markers of the file at `path`; False if it has none."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return False
    if SECTION_BEGIN not in text or SECTION_END not in text:
        return False
    pre, rest = text.split(SECTION_BEGIN, 1)
    _, post = rest.split(SECTION_END, 1)
    with open(path, "w") as f:
        f.write(pre + SECTION_BEGIN + "\n" + body + SECTION_END + post)
    return True


def accuracy_table(err):
    names = sorted({w for (w, _) in err})
    rows = ["| check | normkit | oneDNN | PyTorch |", "|---|---:|---:|---:|"]
    for w in names:
        cells = [f"{err[(w, lib)]:.1e}" if (w, lib) in err else "n/a" for lib in LIBS]
        rows.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def target_misses(med, nbytes, err, workloads, llc):
    misses = []
    for w in workloads:
        nk = med.get((w, "normkit", 2))
        if nk is None:
            continue
        for lib in ("onednn", "pytorch"):
            p = med.get((w, lib, 2))
            if p is not None and p / nk < speedup_target(w, lib):
                need = p / speedup_target(w, lib)
                copy = med.get((w, "copy", 2))
                bound = ""
                if copy and not is_tiny(w) and need < copy:
                    bound = (f"; the target needs {fmt_time(need)}, less than a copy of the "
                             f"same bytes ({fmt_time(copy)})")
                misses.append(f"{w}: {p / nk:.2f}x {LIB_NAMES[lib]} "
                              f"(target {speedup_target(w, lib):g}x{bound})")
        copy = med.get((w, "copy", 2))
        if copy and not is_tiny(w) and llc and nbytes[w] > llc and nk / copy > 1.15:
            misses.append(f"{w}: {nk / copy:.2f}x the copy time (target 1.15x; working set "
                          f"{nbytes[w] / 1e6:.0f} MB > cache {llc / 1e6:.0f} MB)")
    for (w, lib), e in err.items():
        if lib != "normkit" and (w, "normkit") in err and err[(w, "normkit")] > e:
            misses.append(f"{w}: normkit error {err[(w, 'normkit')]:.1e} > {LIB_NAMES[lib]} {e:.1e}")
    return misses


def plot(med, nbytes, workloads, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = [w for w in workloads if not is_tiny(w) and (w, "normkit", 2) in med]
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(ws) + 1.5))
    height = 0.26
    colors = {"normkit": "#1f77b4", "onednn": "#ff7f0e", "pytorch": "#2ca02c"}
    for i, lib in enumerate(LIBS):
        ys, xs = [], []
        for j, w in enumerate(ws):
            t = med.get((w, lib, 2))
            if t:
                ys.append(j + (i - 1) * height)
                xs.append(nbytes[w] / t)
        ax.barh(ys, xs, height=height, color=colors[lib], label=LIB_NAMES[lib])
    for j, w in enumerate(ws):
        copy = med.get((w, "copy", 2))
        if copy:
            gbs = nbytes[w] / copy
            ax.plot([gbs, gbs], [j - 1.5 * height, j + 1.5 * height], color="black", lw=1.5,
                    label="copy of the same bytes" if j == 0 else None)
    ax.set_yticks(range(len(ws)))
    ax.set_yticklabels(ws, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s of minimal memory traffic (2 threads; higher is better)")
    ax.set_title("normkit, oneDNN and PyTorch CPU against the copy ceiling")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--markdown")
    ap.add_argument("--plot")
    ap.add_argument("--readme")
    ap.add_argument("--headline", help="comma-separated workloads of the README table")
    a = ap.parse_args()
    med, nbytes, err, meta, rounds = load(a.raw)
    workloads = workloads_in_order(med)
    llc = llc_bytes()
    versions = ", ".join(f"{LIB_NAMES.get(k, k)} {v}" for k, v in sorted(meta.items()))
    header = (f"{cpu_name()}, {os.cpu_count()} logical CPUs, largest cache "
              f"{llc / 2**20:.0f} MiB; {versions}; {rounds} round(s), "
              f"{time.strftime('%Y-%m-%d', time.gmtime())}. Times are medians; tiny calls are "
              f"per-call latency (PyTorch's from Python).")
    parts = [header]
    for t in (2, 1):
        if any(k[2] == t for k in med):
            parts.append(f"**{t} thread{'s' if t > 1 else ''}**\n\n"
                         + table(med, nbytes, t, workloads))
    if err:
        parts.append("**Accuracy** (max |y - y_ref| on 10000 + N(0,1), float64 reference)\n\n"
                     + accuracy_table(err))
    misses = target_misses(med, nbytes, err, workloads, llc)
    parts.append("**Targets not met at 2 threads**\n\n"
                 + ("\n".join(f"- {m}" for m in misses) if misses else "none"))
    body = "\n\n".join(parts) + "\n"
    print(body)
    if a.markdown and not replace_section(a.markdown, body):
        with open(a.markdown, "w") as f:
            f.write("# normkit against oneDNN and PyTorch\n\nWritten by `benches/peers/run.sh`."
                    "\n\n" + SECTION_BEGIN + "\n" + body + SECTION_END + "\n")
    if a.plot:
        plot(med, nbytes, workloads, a.plot)
    if a.readme:
        chosen = workloads
        if a.headline:
            names = [w.strip() for w in a.headline.split(",") if w.strip()]
            chosen = [w for w in names if w in workloads]
        replace_section(a.readme, header + "\n\n" + headline_table(med, nbytes, chosen) + "\n")


if __name__ == "__main__":
    main()
