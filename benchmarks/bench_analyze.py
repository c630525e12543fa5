"""dsocr-analyze vs NVIDIA's `nsys stats --report nvtx_kern_sum` on synthetic exports, in one run.

    python benchmarks/bench_analyze.py --sizes 1e5,1e6[,1e7] [--seed 0] [--repeat 3] [--ours-only | --baseline-only]

Per size: generate the export (cached as /tmp/dsocr-syn-SIZE-sSEED.sqlite with its truth file), then time
  ours    `dsocr-analyze TRACE --json --ranges all --no-cache` in a fresh process (process start, open,
          attribution, stage table; the cache file is deleted first as well), --repeat times (the
          median wall is the one compared with the target; every run is printed), with its peak RSS;
  nsys    `$NSYS_CPU stats --report nvtx_kern_sum --format csv` on a fresh copy of the file (nsys adds
          indexes to what it reads), the CLI from ../shared/tools/nsys-cpu.sh;
  cached  `dsocr-analyze sql TRACE "select count(*) from kernels"` after a cache-building `sql` run;
assert that both give the generator's per-range totals (kernel ns and kernel count per range name, nsys
rows summed over kernel names; our range instances too), and print a Markdown table.
Exit status 1 when a total differs; the targets of issue 6 are reported, not asserted.

    python benchmarks/bench_analyze.py --profile 1e6

runs one cold analysis in a fresh process with the steps of the sweep path wrapped (PROFILED: it
follows those modules' internals, so it may need a touch when they change) and prints the timeline:
when each step starts and ends, in which thread, and the RSS then.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NSYS_SETUP = REPO.parent / "shared/tools/nsys-cpu.sh"
sys.path.insert(0, str(REPO / "benchmarks"))
import gen_synthetic  # noqa: E402

TIME = "/usr/bin/time"
TARGETS = {1_000_000: (1.5, 10.0, None), 10_000_000: (30.0, None, 4 << 30)}   # size: (seconds, x nsys, RSS bytes)
CACHED_TARGET_S = 0.5


class BenchError(Exception):
    pass


CPU_SECONDS: dict[str, float] = {}   # command line -> user + system CPU seconds of its last run


def timed(cmd: list[str]) -> tuple[float, int, str]:
    """Run cmd in a fresh process: (wall seconds, peak RSS bytes, stdout); CPU seconds go to CPU_SECONDS."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        t0 = time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%M %U %S", "-o", rss.name, *cmd], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        peak_kib, user, system = rss.read().split()[-3:]
    CPU_SECONDS[" ".join(cmd)] = float(user) + float(system)
    return wall, int(peak_kib) * 1024, proc.stdout


def cpu_of(cmd: list[str]) -> float:
    return CPU_SECONDS[" ".join(cmd)]


def trace_for(size: int, seed: int) -> tuple[Path, dict, float | None]:
    path = Path(f"/tmp/dsocr-syn-{size}-s{seed}.sqlite")
    truth_path = Path(str(path) + ".truth.json")
    if path.exists() and truth_path.exists():
        truth = json.loads(truth_path.read_text())
        if truth.get("generator_version") == gen_synthetic.VERSION:
            return path, truth, None
    t0 = time.perf_counter()
    truth = gen_synthetic.generate(size, path, seed=seed, force=True)
    return path, truth, time.perf_counter() - t0


CODE_DIR: str | None = None   # --code: run the analysis package from this folder (e.g. a `git archive` snapshot)


def dsocr_analyze() -> list[str]:
    exe = shutil.which("dsocr-analyze")
    if exe and CODE_DIR is None:
        return [exe]
    path = f"sys.path.insert(0, {CODE_DIR!r}); " if CODE_DIR else ""
    return [sys.executable, "-c", f"import sys; {path}from dsocr_perf.analyze.cli import main; sys.exit(main())"]


def drop_cache(trace: Path) -> None:
    for cache in trace.parent.glob(trace.name + ".dsocr-cache*"):
        cache.unlink()


def range_rows(doc) -> list[dict]:
    """The per-range rows in dsocr-analyze's JSON: the first list of objects having name and inclusive_ns."""
    if isinstance(doc, list):
        if doc and all(isinstance(r, dict) and "name" in r and "inclusive_ns" in r for r in doc):
            return doc
        for item in doc:
            found = range_rows(item)
            if found:
                return found
    elif isinstance(doc, dict):
        for key in ("ranges", *doc.keys()):
            if key in doc:
                found = range_rows(doc[key])
                if found:
                    return found
    return []


def run_ours(trace: Path, repeat: int) -> dict:
    """`repeat` cold runs: the median wall and CPU seconds, all walls, the largest peak RSS."""
    drop_cache(trace)
    cmd = [*dsocr_analyze(), str(trace), "--json", "--ranges", "all", "--no-cache"]
    runs = []
    for _ in range(repeat):
        wall, rss, out = timed(cmd)
        runs.append((wall, cpu_of(cmd), rss))
    wall = statistics.median(w for w, _, _ in runs)
    cpu = statistics.median(c for _, c, _ in runs)
    rss = max(r for _, _, r in runs)
    start = 0 if out.startswith("{") else out.find("\n{") + 1
    noise = out[:start]
    if noise:
        print(f"  WARNING: --json stdout starts with {len(noise)} characters that are not JSON "
              f"({noise.strip()[:60]!r}...; DuckDB's progress bar?)", flush=True)
    rows = range_rows(json.loads(out[start:]))
    if not rows:
        raise BenchError("dsocr-analyze --json printed no per-range rows (objects with name and inclusive_ns)")
    totals = {r["name"]: (int(r["inclusive_ns"]), int(r["kernels"]), int(r["instances"])) for r in rows}
    return {"wall": wall, "cpu": cpu, "rss": rss, "totals": totals, "clean_json": not noise,
            "walls": [w for w, _, _ in runs]}


def run_cached(trace: Path) -> dict:
    drop_cache(trace)
    # the stage table writes no cache (it sweeps); a first `sql` builds it
    build_wall, _, _ = timed([*dsocr_analyze(), "sql", str(trace), "select 1"])
    wall, rss, out = timed([*dsocr_analyze(), "sql", str(trace), "select count(*) from kernels"])
    count = int("".join(ch for ch in out.strip().splitlines()[-1] if ch.isdigit()) or -1)
    return {"build_wall": build_wall, "wall": wall, "rss": rss, "count": count}


def nsys_cli() -> str:
    proc = subprocess.run(["bash", "-c", f"source {NSYS_SETUP} >/dev/null && echo $NSYS_CPU"],
                          capture_output=True, text=True)
    exe = proc.stdout.strip()
    if proc.returncode != 0 or not exe or not os.access(exe, os.X_OK):
        raise BenchError(f"no nsys CLI from {NSYS_SETUP} (it downloads Debian's nsight-systems-target): "
                         f"{proc.stderr.strip()[-500:]}")
    return exe


def run_nsys(trace: Path, nsys: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="dsocr-bench-", dir="/tmp") as tmp:
        copy = Path(tmp) / trace.name
        shutil.copyfile(trace, copy)
        prefix = Path(tmp) / "out"
        cmd = [nsys, "stats", "--report", "nvtx_kern_sum", "--format", "csv", "--output", str(prefix), str(copy)]
        wall, rss, _ = timed(cmd)
        cpu = cpu_of(cmd)
        csv_path = Path(tmp) / "out_nvtx_kern_sum.csv"
        if not csv_path.exists():
            raise BenchError(f"nsys stats wrote no {csv_path.name}")
        totals: dict[str, list[int]] = {}
        with csv_path.open() as f:
            for row in csv.DictReader(f):
                name = row["NVTX Range"].lstrip(":")   # 2025.x prints ':name' for the default domain
                if not name:                          # kernels outside every range
                    continue
                t = totals.setdefault(name, [0, 0])
                t[0] += int(row["Total Time (ns)"])
                t[1] += int(row["Kern Inst"])
    return {"wall": wall, "cpu": cpu, "rss": rss, "totals": {k: tuple(v) for k, v in totals.items()}}


def compare(truth: dict, ours: dict | None, nsys: dict | None) -> list[str]:
    expected = {n: (t["inclusive_ns"], t["kernels"], t["instances"]) for n, t in truth["ranges"].items()}
    problems = []
    if ours is not None:
        got = ours["totals"]
        for name, (ns, k, inst) in expected.items():
            if got.get(name) != (ns, k, inst):
                problems.append(f"dsocr-analyze {name}: (ns, kernels, instances) {got.get(name)} != truth "
                                f"{(ns, k, inst)}")
    if nsys is not None:
        with_kernels = {n: v[:2] for n, v in expected.items() if v[1]}
        if nsys["totals"] != with_kernels:
            for name in sorted(set(with_kernels) | set(nsys["totals"])):
                if nsys["totals"].get(name) != with_kernels.get(name):
                    problems.append(f"nsys {name}: (ns, kernels) {nsys['totals'].get(name)} != truth "
                                    f"{with_kernels.get(name)}")
    if ours is not None and nsys is not None:
        for name, v in nsys["totals"].items():
            if ours["totals"].get(name, (None, None))[:2] != v:
                problems.append(f"dsocr-analyze vs nsys {name}: {ours['totals'].get(name)} vs {v}")
    return problems


def fmt_s(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def fmt_mb(x) -> str:
    return "–" if x is None else f"{x / 2**20:,.0f}"


# Functions of the cold path timed by --profile: module -> names (a wrapper logs each call's start and end).
PROFILED = {
    "dsocr_perf.analyze.load": ("_open_swept",),
    "dsocr_perf.analyze.sweep": ("_read_ops", "_read_calls", "read_small_tables", "sweep", "attribute", "stage_facts"),
    "dsocr_perf.analyze.nvtx": ("read_nvtx",),
    "dsocr_perf.analyze.nsys": ("read_gpus", "read_meta"),
    "dsocr_perf.analyze.efficiency": ("stage_efficiency",),
}


def profile(size: int, seed: int) -> int:
    """One cold `dsocr-analyze TRACE --json --ranges all --no-cache`, in a fresh process, as a timeline:
    when each step of the sweep path starts and ends, in which thread, and the process's RSS then."""
    trace, truth, _ = trace_for(size, seed)
    drop_cache(trace)
    path = f"sys.path.insert(0, {CODE_DIR!r}); " if CODE_DIR else ""
    script = f"""
import sys, time, threading, importlib
T0 = time.perf_counter()
{path}
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
def log(what):
    sys.stderr.write(f"{{time.perf_counter() - T0:.3f}}\t{{threading.current_thread().name}}\t{{what}}\t{{rss_mb():.0f}}\\n")
import dsocr_perf.analyze.cli
log("imports done")
def wrap(module, name):
    inner = getattr(module, name)
    def timed(*args, **kwargs):
        log("start " + name)
        try:
            return inner(*args, **kwargs)
        finally:
            log("end " + name)
    setattr(module, name, timed)
for module, names in {PROFILED!r}.items():
    for name in names:
        wrap(importlib.import_module(module), name)
sys.argv = ["dsocr-analyze", {str(trace)!r}, "--json", "--ranges", "all", "--no-cache"]
try:
    analyze.cli.main()
except SystemExit:
    pass
log("exit")
"""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"the profiled run failed: {proc.stderr.strip()[-2000:]}")
    events = [line.split("\t") for line in proc.stderr.splitlines() if line.count("\t") == 3]
    print(f"# timeline of one cold run, {truth['kernels']:,} kernels ({trace}), load {os.getloadavg()[0]:.1f}; "
          f"process wall {wall:.2f} s (python start included)\n")
    print("| start s | end s | s | thread | step | RSS at end, MB |\n|---:|---:|---:|---|---|---:|")
    open_steps: dict[tuple[str, str], str] = {}
    for t, thread, what, rss in events:
        kind, _, name = what.partition(" ")
        if kind == "start":
            open_steps[(thread, name)] = t
        elif kind == "end":
            begin = open_steps.pop((thread, name), t)
            print(f"| {float(begin):.3f} | {float(t):.3f} | {float(t) - float(begin):.3f} | {thread} | {name} | {rss} |")
        else:
            print(f"| | {float(t):.3f} | | {thread} | {what} | {rss} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e5,1e6", help="kernel counts, comma separated (e.g. 1e5,1e6,1e7)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="cold runs of dsocr-analyze per size (the median is reported)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--ours-only", action="store_true", help="skip nsys stats")
    which.add_argument("--baseline-only", action="store_true", help="only nsys stats")
    which.add_argument("--profile", metavar="SIZE", help="the timeline of one cold analysis (steps, threads, RSS)")
    ap.add_argument("--code", metavar="DIR", help="import the analysis package from DIR instead of the installed one "
                    "(e.g. `git archive HEAD analyze dsocr | tar -x -C DIR` to time the committed code)")
    args = ap.parse_args(argv)
    if args.code:
        global CODE_DIR
        CODE_DIR = str(Path(args.code).resolve())
        if not (Path(CODE_DIR) / "analyze" / "cli.py").exists():
            print(f"Error: --code {args.code} has no analyze/cli.py", file=sys.stderr)
            return 2
        sys.path.insert(0, CODE_DIR)
    if args.profile:
        try:
            return profile(int(float(args.profile)), args.seed)
        except (BenchError, gen_synthetic.GeneratorError, ValueError) as e:
            print(f"Error: {e}", file=sys.stderr)
            return 2
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
    except ValueError:
        print(f"Error: --sizes {args.sizes!r} is not a comma-separated list of numbers (e.g. 1e5,1e6)", file=sys.stderr)
        return 2

    results, failures = [], []
    try:
        nsys = None if args.ours_only else nsys_cli()
        for size in sizes:
            trace, truth, gen_s = trace_for(size, args.seed)
            print(f"# {trace} ({truth['kernels']:,} kernels, {trace.stat().st_size / 2**20:,.0f} MB"
                  + (f", generated in {gen_s:.1f} s" if gen_s else ", cached") + f"), load {os.getloadavg()[0]:.1f}",
                  flush=True)
            ours = None if args.baseline_only else run_ours(trace, max(1, args.repeat))
            if ours:
                print(f"  dsocr-analyze cold: median {ours['wall']:.2f} s ({ours['cpu']:.2f} s CPU) of "
                      f"{len(ours['walls'])} runs {', '.join(f'{w:.2f}' for w in ours['walls'])}; "
                      f"peak RSS {fmt_mb(ours['rss'])} MB", flush=True)
            base = None if args.ours_only else run_nsys(trace, nsys)
            if base:
                print(f"  nsys stats nvtx_kern_sum: {base['wall']:.2f} s ({base['cpu']:.2f} s CPU), "
                      f"peak RSS {fmt_mb(base['rss'])} MB", flush=True)
            cached = None if args.baseline_only else run_cached(trace)
            if cached:
                ops = truth["kernels"] + truth["rows"].get("CUPTI_ACTIVITY_KIND_MEMCPY", 0) + \
                    truth["rows"].get("CUPTI_ACTIVITY_KIND_MEMSET", 0)
                print(f"  cached sql count(*): {cached['wall']:.2f} s -> {cached['count']} "
                      f"(cache built in {cached['build_wall']:.2f} s)", flush=True)
                if cached["count"] != ops:
                    failures.append(f"{size}: sql count(*) from kernels = {cached['count']}, expected {ops} GPU ops")
            problems = compare(truth, ours, base)
            if ours and not ours["clean_json"]:
                failures.append(f"{size}: dsocr-analyze --json printed non-JSON text before the JSON")
            failures += [f"{size}: {p}" for p in problems]
            print(f"  per-range totals: {'identical' if not problems else f'{len(problems)} DIFFER'}", flush=True)
            results.append((size, truth, ours, base, cached, not problems))
    except (BenchError, gen_synthetic.GeneratorError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2

    print()
    print("| kernels | dsocr-analyze cold, median s (CPU s) | peak RSS, MB | nsys stats nvtx_kern_sum, s (CPU s) "
          "| nsys / ours (wall) | cached `sql count(*)`, s | per-range totals |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for _, truth, ours, base, cached, same in results:
        ratio = f"{base['wall'] / ours['wall']:.1f}x" if ours and base else "–"
        ours_s = f"{ours['wall']:.2f} ({ours['cpu']:.2f})" if ours else "–"
        base_s = f"{base['wall']:.2f} ({base['cpu']:.2f})" if base else "–"
        print(f"| {truth['kernels']:,} | {ours_s} | {fmt_mb(ours and ours['rss'])} | {base_s} | {ratio} "
              f"| {fmt_s(cached and cached['wall'])} | {'identical' if same else 'DIFFER'} |")
    print()
    for size, _, ours, base, cached, _ in results:
        if size in TARGETS and ours:
            limit_s, factor, rss_limit = TARGETS[size]
            checks = [f"cold {ours['wall']:.2f} s <= {limit_s} s: {'PASS' if ours['wall'] <= limit_s else 'FAIL'}"]
            if factor and base:
                ratio = base["wall"] / ours["wall"]
                checks.append(f"{ratio:.1f}x nsys >= {factor}x: {'PASS' if ratio >= factor else 'FAIL'}")
            if rss_limit:
                checks.append(f"RSS {fmt_mb(ours['rss'])} MB <= {fmt_mb(rss_limit)} MB: "
                              f"{'PASS' if ours['rss'] <= rss_limit else 'FAIL'}")
            print(f"target {size:.0e}: " + "; ".join(checks))
        if cached:
            print(f"target cached sql at {size:.0e}: {cached['wall']:.2f} s <= {CACHED_TARGET_S} s: "
                  f"{'PASS' if cached['wall'] <= CACHED_TARGET_S else 'FAIL'}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for f in failures:
        print(f"DIFFER {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
