"""dsocr-analyze vs NVIDIA's `nsys stats --report nvtx_kern_sum` on synthetic exports, in one run.

    python benchmarks/bench_analyze.py --sizes 1e5,1e6[,1e7] [--seed 0] [--ours-only | --baseline-only]

Per size: generate the export (cached as /tmp/dsocr-syn-SIZE-sSEED.sqlite with its truth file), then time
  ours    `dsocr-analyze TRACE --json --ranges all --no-cache` in a fresh process (process start, open,
          attribution, stage table; the cache file is deleted first as well), with its peak RSS;
  nsys    `$NSYS_CPU stats --report nvtx_kern_sum --format csv` on a fresh copy of the file (nsys adds
          indexes to what it reads), the CLI from ../shared/tools/nsys-cpu.sh;
  cached  `dsocr-analyze sql TRACE "select count(*) from kernels"` after a cache-building run;
assert that both give the generator's per-range totals (kernel ns and kernel count per range name, nsys
rows summed over kernel names; our range instances too), and print a Markdown table.
Exit status 1 when a total differs; the targets of issue 6 are reported, not asserted.

    python benchmarks/bench_analyze.py --profile 1e6

runs the same cold analysis in this process with every DuckDB statement timed (a proxy connection
handed to analyze.load's internal `_build`; it follows that module's internals, so it may need a touch
when they change) and prints where the time goes: per phase, per calling function, top statements.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
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
    return [sys.executable, "-c", f"import sys; {path}from analyze.cli import main; sys.exit(main())"]


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


def run_ours(trace: Path) -> dict:
    drop_cache(trace)
    cmd = [*dsocr_analyze(), str(trace), "--json", "--ranges", "all", "--no-cache"]
    wall, rss, out = timed(cmd)
    start = 0 if out.startswith("{") else out.find("\n{") + 1
    noise = out[:start]
    if noise:
        print(f"  WARNING: --json stdout starts with {len(noise)} characters that are not JSON "
              f"({noise.strip()[:60]!r}...; DuckDB's progress bar?)", flush=True)
    rows = range_rows(json.loads(out[start:]))
    if not rows:
        raise BenchError("dsocr-analyze --json printed no per-range rows (objects with name and inclusive_ns)")
    totals = {r["name"]: (int(r["inclusive_ns"]), int(r["kernels"]), int(r["instances"])) for r in rows}
    return {"wall": wall, "cpu": cpu_of(cmd), "rss": rss, "totals": totals, "clean_json": not noise}


def run_cached(trace: Path) -> dict:
    drop_cache(trace)
    build_wall, _, _ = timed([*dsocr_analyze(), str(trace), "--json", "--ranges", "all"])
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


class TimedConnection:
    """A DuckDB connection that times every statement, labelled by the analysis function that ran it."""

    def __init__(self, con):
        self._con = con
        self.log: list[tuple[float, float, str, str]] = []   # (wall s, process CPU s, calling function, first SQL line)

    def execute(self, sql, *args):
        # DuckDB resolves an unknown table name from the Python variables of the calling frame
        # (analyze.nsys streams ADBC results that way, as `handle`): make them visible here too.
        handle = sys._getframe(1).f_locals.get("handle")  # noqa: F841
        caller = sys._getframe(1)
        while caller.f_code.co_name in ("_script", "_copy", "into", "rows") and caller.f_back is not None:
            caller = caller.f_back
        result = None
        statements = self._con.extract_statements(sql) if isinstance(sql, str) and not args else [sql]
        for statement in statements:
            text = statement.query if hasattr(statement, "query") else str(statement)
            label = next((line.strip() for line in text.splitlines()
                          if line.strip() and not line.strip().startswith("--")), "")[:90]
            t0, c0 = time.perf_counter(), time.process_time()
            result = self._con.execute(statement, *args)
            self.log.append((time.perf_counter() - t0, time.process_time() - c0, caller.f_code.co_name, label))
        return result

    def cursor(self):
        """A cursor for another thread (analyze.nsys reads GPU ops in one), logging into the same list."""
        other = TimedConnection(self._con.cursor())
        other.log = self.log
        return other

    def __getattr__(self, name):
        return getattr(self._con, name)


def profile(size: int, seed: int) -> int:
    trace, truth, _ = trace_for(size, seed)
    start = time.perf_counter()
    path = f"import sys; sys.path.insert(0, {CODE_DIR!r}); " if CODE_DIR else ""
    importer = [sys.executable, "-c", path + "import analyze.cli, analyze.load, analyze.attribution, analyze.nsys, duckdb, "
                "adbc_driver_sqlite, adbc_driver_manager"]
    import_s, _, _ = timed(importer)
    bare_s, _, _ = timed([sys.executable, "-c", "pass"])
    import duckdb
    from analyze import cli, load

    phases = {}
    con = TimedConnection(duckdb.connect(":memory:"))
    t0, c0 = time.perf_counter(), time.process_time()
    load._build(con, trace, load.sniff(trace), cache=False)
    phases["open (load + attribution)"] = (time.perf_counter() - t0, time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    rows = cli.stage_rows(load._trace(con, trace, None), "all")
    phases["stage table (stage_rows)"] = (time.perf_counter() - t0, time.process_time() - c0)
    total_sql = sum(t for t, _, _, _ in con.log)
    total_cpu = sum(c for _, c, _, _ in con.log)
    print(f"# profile of the cold analysis, {truth['kernels']:,} kernels ({trace}), {len(rows)} range names, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"python start {bare_s:.2f} s; python + imports (analyze, duckdb, adbc) {import_s:.2f} s")
    for name, (secs, cpu) in phases.items():
        print(f"{name}: {secs:.2f} s ({cpu:.2f} s CPU)")
    print(f"DuckDB statements: {total_sql:.2f} s ({total_cpu:.2f} s CPU) in {len(con.log)} statements "
          "(statements of a reader thread overlap the others; CPU s is the whole process's during the statement)")
    by_caller: dict[str, list[float]] = {}
    for secs, cpu, caller, _ in con.log:
        acc = by_caller.setdefault(caller, [0.0, 0.0])
        acc[0] += secs
        acc[1] += cpu
    print("\n| function | s | CPU s |\n|---|---:|---:|")
    for caller, (secs, cpu) in sorted(by_caller.items(), key=lambda kv: -kv[1][0]):
        if secs >= 0.01:
            print(f"| {caller} | {secs:.2f} | {cpu:.2f} |")
    print("\n| s | CPU s | function | statement |\n|---:|---:|---|---|")
    for secs, cpu, caller, label in sorted(con.log, reverse=True)[:15]:
        print(f"| {secs:.2f} | {cpu:.2f} | {caller} | `{label}` |")
    print(f"\nwall {time.perf_counter() - start:.1f} s for the whole profile")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e5,1e6", help="kernel counts, comma separated (e.g. 1e5,1e6,1e7)")
    ap.add_argument("--seed", type=int, default=0)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--ours-only", action="store_true", help="skip nsys stats")
    which.add_argument("--baseline-only", action="store_true", help="only nsys stats")
    which.add_argument("--profile", metavar="SIZE", help="time every DuckDB statement of one cold analysis")
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
            ours = None if args.baseline_only else run_ours(trace)
            if ours:
                print(f"  dsocr-analyze cold: {ours['wall']:.2f} s ({ours['cpu']:.2f} s CPU), "
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
    print("| kernels | dsocr-analyze cold, s (CPU s) | peak RSS, MB | nsys stats nvtx_kern_sum, s (CPU s) "
          "| nsys / ours (wall) | cached `sql count(*)`, s | per-range totals |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for size, truth, ours, base, cached, same in results:
        ratio = f"{base['wall'] / ours['wall']:.1f}x" if ours and base else "–"
        ours_s = f"{ours['wall']:.2f} ({ours['cpu']:.2f})" if ours else "–"
        base_s = f"{base['wall']:.2f} ({base['cpu']:.2f})" if base else "–"
        print(f"| {truth['kernels']:,} | {ours_s} | {fmt_mb(ours and ours['rss'])} | {base_s} | {ratio} "
              f"| {fmt_s(cached and cached['wall'])} | {'identical' if same else 'DIFFER'} |")
    print()
    for size, truth, ours, base, cached, _ in results:
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
