"""dsocr-analyze against its targets (issue 13), NVIDIA's `nsys stats` and the code it replaces, in one run.

    python benchmarks/bench_analyze.py [--sizes 1e6,1e7] [--repeat 5] [--baseline-ref REF] [--no-nsys]
    python benchmarks/bench_analyze.py --profile 1e6     # timeline of one cold run: steps, threads, RSS

Per size the synthetic export is generated once (benchmarks/gen_synthetic.py, cached as
/tmp/dsocr-syn-SIZE-sSEED.sqlite with its truth; at 1e6 also its nsys Parquet export, a `parquetdir`
folder beside it). Every timing is a fresh process under /usr/bin/time (wall, CPU, peak RSS), the
median of --repeat runs (all runs printed), in a private cache folder:

  cold        `dsocr-analyze TRACE --json --ranges all --no-cache`: the stage table, end to end
  first sql   `dsocr-analyze sql TRACE "select count(*) from kernels"` with no cache (a big trace's
              cache is then written by a detached process: the run waits for it, untimed)
  cached sql  the same query once the cache exists
  parquet     `dsocr-analyze PARQUETDIR --json --ranges all --no-cache` on the Parquet export (1e6)
  floor       a fresh process that imports PyArrow and ADBC and reads just the columns the analysis
              reads (KERNEL, MEMCPY, MEMSET: start, end, correlationId, globalPid, deviceId << 40 |
              streamId; RUNTIME: correlationId, globalTid, start, end, nameId; NVTX_EVENTS: the range,
              mark and domain rows' 8 columns) in three threads, as the analysis does; for Parquet the
              same columns through pyarrow.parquet: no analysis can be faster than its reader
  nsys        `$NSYS_CPU stats --report nvtx_kern_sum --format csv` on a fresh copy (nsys adds indexes
              to what it reads), the CLI from ../shared/tools/nsys-cpu.sh (1e6 only: ~7 min and 10 GB at 1e7)
  baseline    with --baseline-ref REF: the same commands with the package as committed at REF
              (`git archive`), measured in the same run

It asserts that dsocr-analyze, nsys and the generator's truth give the same per-range kernel ns and
kernel count (nsys rows summed over kernel names), and the same instance counts as the truth, on the
SQLite and the Parquet export; exit status 1 otherwise. The targets are printed, not asserted.
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
sys.path.insert(0, str(REPO / "tests"))
import gen_synthetic  # noqa: E402

TIME = "/usr/bin/time"
MB = 2 ** 20
# what: (seconds, x nsys, peak RSS bytes)
TARGETS = {"cold 1e6": (0.8, 20.0, None), "cold 1e7": (8.0, None, 1.5e9), "first sql 1e7": (10.0, None, None),
           "cached sql 1e7": (0.3, None, None), "parquet 1e6": (0.4, None, None)}
SQL = "select count(*) from kernels"
PACKAGES = ("analyze", "dsocr", "launch", "models", "sql")


class BenchError(Exception):
    pass


# ------------------------------------------------------------------------------------------- running

def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run cmd in a fresh process: wall s, CPU s, peak RSS bytes, stdout."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        t0 = time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%M %U %S", "-o", rss.name, *cmd], capture_output=True, text=True,
                              env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        peak_kib, user, system = rss.read().split()[-3:]
    return {"wall": wall, "cpu": float(user) + float(system), "rss": int(peak_kib) * 1024, "out": proc.stdout}


def repeated(cmd: list[str], repeat: int, env: dict | None = None) -> dict:
    """`repeat` runs: median wall and CPU, largest RSS, every wall, the last stdout."""
    return interleaved([cmd], repeat, env)[0]


def interleaved(cmds: list[list[str]], repeat: int, env: dict | None = None) -> list[dict]:
    """`repeat` rounds of one run of each command in turn (a shared machine's speed drifts: the
    commands compared see the same drift): per command its median wall and CPU, largest RSS, walls."""
    runs: list[list[dict]] = [[] for _ in cmds]
    for _ in range(repeat):
        for i, cmd in enumerate(cmds):
            runs[i].append(timed(cmd, env))
    return [{"wall": statistics.median(r["wall"] for r in rs), "cpu": statistics.median(r["cpu"] for r in rs),
             "rss": max(r["rss"] for r in rs), "walls": [r["wall"] for r in rs], "out": rs[-1]["out"]} for rs in runs]


class Code:
    """The package to time: the installed one, or a snapshot of REF in a temporary folder."""

    def __init__(self, ref: str | None = None):
        self.ref, self.dir = ref, None
        if ref:
            self.dir = Path(tempfile.mkdtemp(prefix="dsocr-bench-code-"))
            target = self.dir / "dsocr_perf"
            target.mkdir()
            for package in PACKAGES:
                archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, package], capture_output=True)
                if archive.returncode != 0:
                    raise BenchError(f"git archive {ref} {package}: {archive.stderr.decode().strip()}")
                subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)

    def analyze(self) -> list[str]:
        path = f"sys.path.insert(0, {str(self.dir)!r}); " if self.dir else ""
        return [sys.executable, "-c", f"import sys; {path}from dsocr_perf.analyze.cli import main; sys.exit(main())"]

    def close(self) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------- inputs

def trace_for(size: int, seed: int) -> tuple[Path, dict]:
    path = Path(f"/tmp/dsocr-syn-{size}-s{seed}.sqlite")
    truth_path = Path(str(path) + ".truth.json")
    if path.exists() and truth_path.exists():
        truth = json.loads(truth_path.read_text())
        if truth.get("generator_version") == gen_synthetic.VERSION:
            return path, truth
    print(f"  generating {path} ...", flush=True)
    return path, gen_synthetic.generate(size, path, seed=seed, force=True)


def parquet_for(trace: Path) -> Path:
    """nsys's Parquet export of the trace (`nsys export --type parquetdir` layout: one TABLE.parquet per
    table, globalTid/globalPid as uint64; tests/nsys_parquet.py), made once beside it."""
    folder = trace.with_suffix(".parquetdir")
    if not (folder / "StringIds.parquet").exists() or folder.stat().st_mtime < trace.stat().st_mtime:
        from nsys_parquet import to_parquetdir

        print(f"  writing {folder} ...", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        to_parquetdir(trace, folder)
    return folder


# --------------------------------------------------------------------------------------- the floor

FLOOR_SQLITE = r"""
import sys, threading
import pyarrow as pa, adbc_driver_manager as dm, adbc_driver_sqlite
path = sys.argv[1]
OPS = "SELECT start, end, correlationId, globalPid, (deviceId << 40) | streamId FROM "
OPS_TABLES = ["CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET"]
CALLS = "SELECT correlationId, globalTid, start, end, nameId FROM CUPTI_ACTIVITY_KIND_RUNTIME"
NVTX = ("SELECT start, end, eventType, globalTid, endGlobalTid, text, textId, domainId FROM NVTX_EVENTS "
        "WHERE eventType IN (59, 60, 70, 71, 34, 75)")
def read(*queries):
    db = adbc_driver_sqlite.connect("file:" + path + "?mode=ro&immutable=1")
    conn = dm.AdbcConnection(db)
    for sql in queries:
        statement = dm.AdbcStatement(conn)
        statement.set_options(**{"adbc.sqlite.query.batch_rows": "65536"})
        statement.set_sql_query(sql)
        handle, _ = statement.execute_query()
        for batch in pa.RecordBatchReader.from_stream(handle):
            pass
        statement.close()
    conn.close(); db.close()
threads = [threading.Thread(target=read, args=[OPS + t for t in OPS_TABLES]), threading.Thread(target=read, args=[CALLS])]
[t.start() for t in threads]
read("SELECT id, value FROM StringIds", NVTX)
[t.join() for t in threads]
"""

FLOOR_PARQUET = r"""
import sys
import pyarrow.parquet as pq
folder = sys.argv[1]
ops = ["start", "end", "correlationId", "globalPid", "deviceId", "streamId"]
for table, columns in (("CUPTI_ACTIVITY_KIND_KERNEL", ops), ("CUPTI_ACTIVITY_KIND_MEMCPY", ops + ["copyKind"]),
                       ("CUPTI_ACTIVITY_KIND_MEMSET", ops),
                       ("CUPTI_ACTIVITY_KIND_RUNTIME", ["correlationId", "globalTid", "start", "end", "nameId"]),
                       ("NVTX_EVENTS", ["start", "end", "eventType", "globalTid", "endGlobalTid", "text", "textId",
                                        "domainId"]), ("StringIds", ["id", "value"])):
    pq.read_table(f"{folder}/{table}.parquet", columns=columns)
"""


def floor_command(source: Path, parquet: bool = False) -> list[str]:
    return [sys.executable, "-c", FLOOR_PARQUET if parquet else FLOOR_SQLITE, str(source)]


# ----------------------------------------------------------------------------------------- commands

def range_rows(doc: dict) -> list[dict]:
    """The per-range rows of dsocr-analyze's --json document."""
    return doc["ranges"]


def cold(codes: list[Code], trace: Path, repeat: int, env: dict, parquet: bool = False) -> list[dict]:
    """The reader's floor, then the cold stage table of each code, their runs interleaved."""
    results = interleaved([floor_command(trace, parquet)] +
                          [[*code.analyze(), str(trace), "--json", "--ranges", "all", "--no-cache"] for code in codes],
                          repeat, env)
    for result in results[1:]:
        out = result.pop("out")
        if not out.startswith("{"):
            raise BenchError(f"--json stdout starts with text that is not JSON: {out[:60]!r}")
        rows = range_rows(json.loads(out))
        result["totals"] = {r["name"]: (int(r["inclusive_ns"]), int(r["kernels"]), int(r["instances"])) for r in rows}
    return results


def sql_runs(code: Code, trace: Path, repeat: int, env: dict) -> tuple[dict, dict]:
    """(first query with no cache, the same query once the cache is written)."""
    cache = Path(env["XDG_CACHE_HOME"]) / "dsocr-perf"
    cmd = [*code.analyze(), "sql", str(trace), SQL]
    shutil.rmtree(cache, ignore_errors=True)
    first = timed(cmd, env)
    deadline = time.monotonic() + 1800
    while (not any(cache.glob("*.duckdb")) or any(cache.glob(".*.building"))) and time.monotonic() < deadline:
        time.sleep(0.5)                      # a big trace's cache: written by a detached process
    if not any(cache.glob("*.duckdb")):
        raise BenchError(f"no cache appeared in {cache} after `sql` on {trace}")
    cached = repeated(cmd, repeat, env)
    first["count"] = cached["count"] = int("".join(ch for ch in cached["out"].split()[-1] if ch.isdigit()))
    return first, cached


def nsys_run(trace: Path, nsys: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="dsocr-bench-", dir="/tmp") as tmp:
        copy = Path(tmp) / trace.name
        shutil.copyfile(trace, copy)
        prefix = Path(tmp) / "out"
        result = timed([nsys, "stats", "--report", "nvtx_kern_sum", "--format", "csv", "--output", str(prefix),
                        str(copy)])
        totals: dict[str, list[int]] = {}
        with (Path(tmp) / "out_nvtx_kern_sum.csv").open() as f:
            for row in csv.DictReader(f):
                name = row["NVTX Range"].lstrip(":")   # 2025.x prints ':name' for the default domain
                if name:                              # empty: kernels outside every range
                    t = totals.setdefault(name, [0, 0])
                    t[0] += int(row["Total Time (ns)"])
                    t[1] += int(row["Kern Inst"])
    result["totals"] = {k: tuple(v) for k, v in totals.items()}
    return result


def nsys_cli() -> str:
    proc = subprocess.run(["bash", "-c", f"source {NSYS_SETUP} >/dev/null && echo $NSYS_CPU"],
                          capture_output=True, text=True)
    exe = proc.stdout.strip()
    if proc.returncode != 0 or not exe or not os.access(exe, os.X_OK):
        raise BenchError(f"no nsys CLI from {NSYS_SETUP}: {proc.stderr.strip()[-500:]}")
    return exe


def differences(truth: dict, ours: dict | None, nsys: dict | None, what: str) -> list[str]:
    expected = {n: (t["inclusive_ns"], t["kernels"], t["instances"]) for n, t in truth["ranges"].items()}
    problems = []
    if ours is not None:
        problems += [f"{what} {name}: {ours['totals'].get(name)} != truth {v}" for name, v in expected.items()
                     if ours["totals"].get(name) != v]
    if nsys is not None:
        with_kernels = {n: v[:2] for n, v in expected.items() if v[1]}
        problems += [f"nsys {name}: {nsys['totals'].get(name)} != truth {with_kernels.get(name)}"
                     for name in sorted(set(with_kernels) | set(nsys["totals"]))
                     if nsys["totals"].get(name) != with_kernels.get(name)]
    return problems


# --------------------------------------------------------------------------------------- reporting

def seconds(r: dict | None) -> str:
    return "–" if r is None else f"{r['wall']:.2f} ({r['cpu']:.2f})"


def runs(r: dict) -> str:
    return ", ".join(f"{w:.2f}" for w in r.get("walls", [r["wall"]]))


def row(what: str, ours: dict, baseline: tuple[str, dict | None] | None = None, floor_: dict | None = None) -> str:
    target = TARGETS.get(what)
    goal, verdicts = "", []
    if target:
        limit_s, factor, rss = target
        goal = f"<= {limit_s} s"
        verdicts.append("PASS" if ours["wall"] <= limit_s else "FAIL")
        if rss:
            goal += f", <= {rss / 1e9:.1f} GB"
            verdicts.append("PASS" if ours["rss"] <= rss else "FAIL")
        if factor and baseline and baseline[1] and baseline[0] == "nsys stats":
            goal += f", >= {factor:.0f}x {baseline[0]}"
            verdicts.append("PASS" if baseline[1]["wall"] / ours["wall"] >= factor else "FAIL")
    base_name, base = baseline if baseline else ("–", None)
    ratio = f"{base['wall'] / ours['wall']:.1f}x" if base else "–"
    return (f"| {what} | {seconds(ours)} | {ours['rss'] / MB:,.0f} | {goal or '–'} | {' '.join(verdicts) or '–'} "
            f"| {base_name}: {seconds(base)} | {ratio} | {seconds(floor_)} |")


# ------------------------------------------------------------------------------------------ profile

# Steps of the cold stage-table path timed by --profile: (module where the name is looked up, name).
PROFILED = (
    ("dsocr_perf.analyze.trace", "compute"),
    ("dsocr_perf.analyze.read.nsys", "read_nsys"), ("dsocr_perf.analyze.read.nsys", "_read_ops"),
    ("dsocr_perf.analyze.read.nsys", "_read_calls"), ("dsocr_perf.analyze.read.nsys", "read_nvtx"),
    ("dsocr_perf.analyze.read.nsys", "_calls"), ("dsocr_perf.analyze.attribute", "attribute"),
    ("dsocr_perf.analyze.attribute", "CallIndex"), ("dsocr_perf.analyze.attribute", "build_lanes"),
    ("dsocr_perf.analyze.read.raw", "Raw.ops"), ("dsocr_perf.analyze.accounting", "idle_time"),
    ("dsocr_perf.analyze.accounting", "call_facts"), ("dsocr_perf.analyze.out.document", "document"),
    ("dsocr_perf.analyze.out.document", "decode_steps"), ("dsocr_perf.analyze.cli", "echo_json"),
)


def profile(size: int, seed: int, code: Code) -> int:
    """One cold `dsocr-analyze TRACE --json --ranges all --no-cache` in a fresh process, as a timeline:
    when each step starts and ends, in which thread, and the process's RSS then."""
    trace, truth = trace_for(size, seed)
    path = f"sys.path.insert(0, {str(code.dir)!r})" if code.dir else "pass"
    script = f"""
import sys, time, threading, importlib
T0 = time.perf_counter()
{path}
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
def log(what):
    sys.stderr.write(f"{{time.perf_counter() - T0:.3f}}\\t{{threading.current_thread().name}}\\t{{what}}\\t{{rss_mb():.0f}}\\n")
import dsocr_perf.analyze.cli as cli
log("imports done")
def wrap(module, name):
    owner = module
    for part in name.split(".")[:-1]:
        owner = getattr(owner, part)
    attr = name.split(".")[-1]
    inner = getattr(owner, attr)
    call = inner.fget if isinstance(inner, property) else inner
    def timed(*args, **kwargs):
        log("start " + name)
        try:
            return call(*args, **kwargs)
        finally:
            log("end " + name)
    setattr(owner, attr, property(timed) if isinstance(inner, property) else timed)
for module, name in {PROFILED!r}:
    wrap(importlib.import_module(module), name)
sys.argv = ["dsocr-analyze", {str(trace)!r}, "--json", "--ranges", "all", "--no-cache"]
try:
    cli.main()
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
    started: dict[tuple[str, str], str] = {}
    for t, thread, what, rss in events:
        kind, _, name = what.partition(" ")
        if kind == "start":
            started[(thread, name)] = t
        elif kind == "end":
            begin = started.pop((thread, name), t)
            print(f"| {float(begin):.3f} | {float(t):.3f} | {float(t) - float(begin):.3f} | {thread} | {name} | {rss} |")
        else:
            print(f"| | {float(t):.3f} | | {thread} | {what} | {rss} |")
    return 0


# --------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7", help="kernel counts, comma separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5, help="runs per timing (the median is reported)")
    ap.add_argument("--baseline-ref", metavar="REF", help="also time the package as committed at this git ref")
    ap.add_argument("--no-nsys", action="store_true", help="skip nsys stats")
    ap.add_argument("--profile", metavar="SIZE", help="the timeline of one cold analysis (steps, threads, RSS)")
    args = ap.parse_args(argv)
    ours, base = Code(), None
    try:
        if args.profile:
            return profile(int(float(args.profile)), args.seed, ours)
        sizes = [int(float(s)) for s in args.sizes.split(",")]
        base = Code(args.baseline_ref) if args.baseline_ref else None
        nsys = None if args.no_nsys else nsys_cli()
        return run(sizes, args.seed, max(1, args.repeat), ours, base, nsys)
    except (BenchError, gen_synthetic.GeneratorError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    finally:
        if base:
            base.close()


def run(sizes: list[int], seed: int, repeat: int, code: Code, base: Code | None, nsys: str | None) -> int:
    cache_home = Path(tempfile.mkdtemp(prefix="dsocr-bench-cache-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    rows, failures = [], []
    try:
        for size in sizes:
            trace, truth = trace_for(size, seed)
            label = f"{size:.0e}".replace("+0", "")
            print(f"# {trace}: {truth['kernels']:,} kernels, {trace.stat().st_size / MB:,.0f} MB; "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            if base and size < 10**7:
                low, mine, old = cold([code, base], trace, repeat, env)
            else:
                low, mine = cold([code], trace, repeat, env)
                old = cold([base], trace, 1, env)[1] if base else None
            print(f"  floor (read the columns used): {seconds(low)} of {runs(low)}", flush=True)
            print(f"  cold: {seconds(mine)} of {runs(mine)}; peak RSS {mine['rss'] / MB:,.0f} MB", flush=True)
            if old:
                print(f"  cold at {base.ref}: {seconds(old)} of {runs(old)}; peak RSS {old['rss'] / MB:,.0f} MB",
                      flush=True)
            stats = nsys_run(trace, nsys) if nsys and size <= 10**6 else None
            if stats:
                print(f"  nsys stats nvtx_kern_sum: {seconds(stats)}; peak RSS {stats['rss'] / MB:,.0f} MB", flush=True)
            problems = differences(truth, mine, stats, "dsocr-analyze") + \
                (differences(truth, old, None, f"dsocr-analyze at {base.ref}") if old else [])
            first, cached = sql_runs(code, trace, repeat, env)
            print(f"  first sql: {seconds(first)}, peak RSS {first['rss'] / MB:,.0f} MB; cached sql: {seconds(cached)} "
                  f"of {runs(cached)}", flush=True)
            ops = truth["kernels"] + truth["rows"].get("CUPTI_ACTIVITY_KIND_MEMCPY", 0) + \
                truth["rows"].get("CUPTI_ACTIVITY_KIND_MEMSET", 0)
            if cached["count"] != ops:
                problems.append(f"sql count(*) from kernels = {cached['count']}, expected {ops} GPU ops")
            old_first = sql_runs(base, trace, 1, env)[0] if base and size <= 10**6 else None
            rows += [row(f"cold {label}", mine, ("nsys stats", stats) if stats else (base.ref, old) if old else None,
                         low)]
            if stats and old:
                rows.append(row(f"cold {label} vs {base.ref}", mine, (base.ref, old), low))
            rows += [row(f"first sql {label}", first, (base.ref, old_first) if old_first else None),
                     row(f"cached sql {label}", cached)]
            if size == 10**6:
                folder = parquet_for(trace)
                pq_floor, pq = cold([code], folder, repeat, env, parquet=True)
                print(f"  parquet cold: {seconds(pq)} of {runs(pq)}; floor {seconds(pq_floor)}", flush=True)
                problems += differences(truth, pq, None, "dsocr-analyze (Parquet)")
                rows.append(row(f"parquet {label}", pq, ("SQLite cold", mine), pq_floor))
            print(f"  per-range totals: {'identical' if not problems else f'{len(problems)} DIFFER'}", flush=True)
            failures += [f"{label}: {p}" for p in problems]
    finally:
        shutil.rmtree(cache_home, ignore_errors=True)
    print("\n| measurement | ours, median s (CPU s) | peak RSS, MB | target | | baseline, s (CPU s) | baseline / ours "
          "| floor, s (CPU s) |")
    print("|---|---:|---:|---|---|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; medians of {repeat} runs "
          f"(the baseline's cold runs interleaved with ours; at 1e7 one run after ours)")
    for f in failures:
        print(f"DIFFER {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
