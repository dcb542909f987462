"""Tables and a plot from the peer comparison's JSON lines (see run.sh).

    python report.py RAW.jsonl [--markdown OUT.md] [--plot OUT.png] [--readme README.md]
                     [--headline WORKLOAD,WORKLOAD,...]

Every (workload, library, threads) was timed once per round as a median of many calls; the
report takes the median over rounds. The peers are whatever libraries the lines name besides
normkit and the copy: oneDNN releases ("onednn-3.2", "onednn-3.13", or plain "onednn"), PyTorch
("pytorch") and ONNX Runtime ("onnxruntime"); each gets a column, named with its version where the
library name carries one, and the header and the plot's legend give every library's full
version from the "meta" lines. GB/s is the workload's minimal traffic (bytes read and written
once; 1 GB = 10^9 bytes) over the time; "of copy" is the copy time of the same bytes in the same
run over the library's time (100% = as fast as a copy). A peer's cell is its time and, in
parentheses, its time over normkit's (2.00x = normkit twice as fast); "best peer" is the fastest
of the peers that have the workload, and "vs best" its time over normkit's. Targets checked at 2
threads: >= 1.2x every oneDNN release and ONNX Runtime (native kernels, like normkit's), >= 2x
PyTorch (10x for dropout), and for working sets larger than the last-level cache at most 1.15x
the copy time. The plot needs matplotlib; the tables need only the standard library.

Both files are rewritten only between the markers `<!-- peers-table:begin -->` and
`<!-- peers-table:end -->`, so the text around them is kept: OUT.md gets every table (a new file
is written whole), README.md the headline table, the 2-thread rows of the --headline workloads
(every workload without --headline) with normkit's speed and its best peer.
"""

import argparse
import json
import os
import platform
import statistics
import time
from collections import defaultdict

# Peer families in column order; releases of one family in version order.
FAMILIES = ("onednn", "pytorch", "onnxruntime")
FAMILY_NAMES = {"normkit": "normkit", "onednn": "oneDNN", "pytorch": "PyTorch",
                "onnxruntime": "ONNX Runtime"}
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


def family(lib):
    return "onednn" if lib.startswith("onednn-") else lib


def release(lib):
    """The version a library name carries ("onednn-3.13" -> (3, 13)), () if none."""
    _, _, v = lib.partition("-")
    try:
        return tuple(int(p) for p in v.split(".")) if v else ()
    except ValueError:
        return ()


def lib_name(lib):
    """Short name for a table: "oneDNN 3.13", "PyTorch"."""
    name = FAMILY_NAMES.get(family(lib), lib)
    if release(lib):
        name += " " + ".".join(map(str, release(lib)))
    return name


def lib_label(lib, meta):
    """Name with the full version from the meta lines: "oneDNN 3.13.2", "PyTorch 2.15.0"."""
    if lib in meta:
        return f"{FAMILY_NAMES.get(family(lib), lib)} {meta[lib]}"
    return lib_name(lib)


def peer_order(lib):
    f = family(lib)
    return (FAMILIES.index(f) if f in FAMILIES else len(FAMILIES), f, release(lib))


def peers_of(keys):
    """The peers named in (workload, lib, ...) keys, in column order."""
    return sorted({k[1] for k in keys} - {"normkit", "copy"}, key=peer_order)


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
    """normkit's target speed-up over a peer (None: no target)."""
    f = family(lib)
    if f in ("onednn", "onnxruntime"):
        return 1.2
    if f == "pytorch":
        return 10.0 if w.startswith("dropout") else 2.0
    return None


def best_peer(med, w, threads, peers):
    """(lib, ns) of the fastest peer that has workload w (the first in column order on a tie),
    or (None, None)."""
    best, best_ns = None, None
    for p in peers:
        t = med.get((w, p, threads))
        if t is not None and (best_ns is None or t < best_ns):
            best, best_ns = p, t
    return best, best_ns


def table(med, nbytes, threads, workloads, peers):
    rows = [
        "| workload | normkit | GB/s | of copy | "
        + "".join(f"{lib_name(p)} | " for p in peers) + "best peer | vs best | copy |",
        "|---|---:|---:|---:|" + "---:|" * len(peers) + "---|---:|---:|",
    ]
    for w in workloads:
        nk = med.get((w, "normkit", threads))
        if nk is None:
            continue
        copy = med.get((w, "copy", threads))
        if is_tiny(w):
            gbs = of_copy = "-"
        else:
            gbs = f"{nbytes[w] / nk:.1f}"
            of_copy = f"{copy / nk * 100:.0f}%" if copy else "-"
        cells = []
        for p in peers:
            t = med.get((w, p, threads))
            cells.append(f"{fmt_time(t)} ({t / nk:.2f}x)" if t else "n/a")
        best, best_ns = best_peer(med, w, threads, peers)
        vs = f"{best_ns / nk:.2f}x" if best else "n/a"
        rows.append(f"| {w} | {fmt_time(nk)} | {gbs} | {of_copy} | "
                    + "".join(f"{c} | " for c in cells)
                    + f"{lib_name(best) if best else 'n/a'} | {vs} | "
                    f"{fmt_time(copy) if copy else '-'} |")
    return "\n".join(rows)


def headline_table(med, nbytes, workloads):
    """The 2-thread rows of `workloads`: normkit's time, GB/s and share of the copy, and its
    best peer with that peer's time over normkit's."""
    peers = peers_of(k for k in med if k[2] == 2)
    rows = [
        "| workload, 2 threads | normkit | GB/s | of copy | best peer | vs best |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for line in table(med, nbytes, 2, workloads, peers).splitlines()[2:]:
        c = [x.strip() for x in line.strip("|").split("|")]
        # workload, normkit, GB/s, of copy, <one per peer>, best peer, vs best, copy
        rows.append("| " + " | ".join(c[:4] + c[-3:-1]) + " |")
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
    libs = ["normkit"] + peers_of(err)
    rows = ["| check | " + " | ".join(lib_name(lib) for lib in libs) + " |",
            "|---|" + "---:|" * len(libs)]
    for w in sorted({w for (w, _) in err}):
        cells = [f"{err[(w, lib)]:.1e}" if (w, lib) in err else "n/a" for lib in libs]
        rows.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def target_misses(med, nbytes, err, workloads, llc):
    misses = []
    peers = peers_of(med)
    for w in workloads:
        nk = med.get((w, "normkit", 2))
        if nk is None:
            continue
        for lib in peers:
            p = med.get((w, lib, 2))
            target = speedup_target(w, lib)
            if p is not None and target is not None and p / nk < target:
                need = p / target
                copy = med.get((w, "copy", 2))
                bound = ""
                if copy and not is_tiny(w) and need < copy:
                    bound = (f"; the target needs {fmt_time(need)}, less than a copy of the "
                             f"same bytes ({fmt_time(copy)})")
                misses.append(f"{w}: {p / nk:.2f}x {lib_name(lib)} "
                              f"(target {target:g}x{bound})")
        copy = med.get((w, "copy", 2))
        if copy and not is_tiny(w) and llc and nbytes[w] > llc and nk / copy > 1.15:
            misses.append(f"{w}: {nk / copy:.2f}x the copy time (target 1.15x; working set "
                          f"{nbytes[w] / 1e6:.0f} MB > cache {llc / 1e6:.0f} MB)")
    for (w, lib), e in err.items():
        if lib != "normkit" and (w, "normkit") in err and err[(w, "normkit")] > e:
            misses.append(f"{w}: normkit error {err[(w, 'normkit')]:.1e} > {lib_name(lib)} "
                          f"{e:.1e}")
    return misses


PEER_COLORS = {"pytorch": "#2ca02c", "onnxruntime": "#9467bd"}
ONEDNN_COLORS = ("#ff7f0e", "#d62728", "#8c564b", "#e377c2")


def plot(med, nbytes, workloads, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = [w for w in workloads if not is_tiny(w) and (w, "normkit", 2) in med]
    libs = ["normkit"] + peers_of(k for k in med if k[2] == 2)
    colors = {"normkit": "#1f77b4"}
    onednn = [lib for lib in libs if family(lib) == "onednn"]
    for i, lib in enumerate(onednn):
        colors[lib] = ONEDNN_COLORS[i % len(ONEDNN_COLORS)]
    fig, ax = plt.subplots(figsize=(11, 0.14 * len(libs) * len(ws) + 1.8))
    height = 0.84 / len(libs)
    for i, lib in enumerate(libs):
        ys, xs = [], []
        for j, w in enumerate(ws):
            t = med.get((w, lib, 2))
            if t:
                ys.append(j + (i - (len(libs) - 1) / 2) * height)
                xs.append(nbytes[w] / t)
        ax.barh(ys, xs, height=height, color=colors.get(lib, PEER_COLORS.get(lib, "#7f7f7f")),
                label=lib_label(lib, meta))
    for j, w in enumerate(ws):
        copy = med.get((w, "copy", 2))
        if copy:
            gbs = nbytes[w] / copy
            ax.plot([gbs, gbs], [j - len(libs) / 2 * height, j + len(libs) / 2 * height],
                    color="black", lw=1.5, label="copy of the same bytes" if j == 0 else None)
    ax.set_yticks(range(len(ws)))
    ax.set_yticklabels(ws, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s of minimal memory traffic (2 threads; higher is better)")
    ax.set_title("normkit and its peers on the CPU against the copy ceiling")
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
    ap.add_argument("--headline")
    a = ap.parse_args()
    med, nbytes, err, meta, rounds = load(a.raw)
    workloads = workloads_in_order(med)
    llc = llc_bytes()
    versions = ", ".join(lib_label(k, meta)
                         for k in sorted(meta, key=lambda k: (k != "normkit", peer_order(k))))
    header = (f"{cpu_name()}, {os.cpu_count()} logical CPUs, largest cache "
              f"{llc / 2**20:.0f} MiB; {versions}; {rounds} round(s), "
              f"{time.strftime('%Y-%m-%d', time.gmtime())}. Times are medians; a peer's cell "
              f"is its time (its time over normkit's); best peer = the fastest peer that has "
              f"the workload. Tiny calls are per-call latency (PyTorch's and ONNX Runtime's "
              f"from Python).")
    parts = [header]
    for t in (2, 1):
        if any(k[2] == t for k in med):
            peers = peers_of(k for k in med if k[2] == t)
            parts.append(f"**{t} thread{'s' if t > 1 else ''}**\n\n"
                         + table(med, nbytes, t, workloads, peers))
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
            f.write("# normkit against oneDNN, ONNX Runtime and PyTorch\n\nWritten by "
                    "`benches/peers/run.sh`.\n\n" + SECTION_BEGIN + "\n" + body + SECTION_END
                    + "\n")
    if a.plot:
        plot(med, nbytes, workloads, meta, a.plot)
    if a.readme:
        chosen = workloads
        if a.headline:
            names = [w.strip() for w in a.headline.split(",") if w.strip()]
            chosen = [w for w in names if w in workloads]
        replace_section(a.readme, header + "\n\n" + headline_table(med, nbytes, chosen) + "\n")


if __name__ == "__main__":
    main()
