"""Does a change leave every number of `dsocr-analyze` as it was? Save the outputs of one version, compare another.

    python benchmarks/same_output.py --save /tmp/before [--code DIR]     # outputs of the code in DIR (default: installed)
    python benchmarks/same_output.py --against /tmp/before [--code DIR]  # the same commands again, compared

Per trace (the real exports in ../shared, the example capture, the Kineto traces, and any --trace given),
runs in a fresh process, without the cache:
    dsocr-analyze TRACE --json --ranges all --no-cache
    dsocr-analyze sql TRACE "SELECT * FROM VIEW" --json --no-cache     for every canonical view (not with --no-views;
                                    for exports over 20 MB: the row count, an XOR of row hashes and the first rows)
and stores or compares the output byte for byte (a difference prints the first JSON path that differs).
DIR is a folder holding `dsocr_perf/analyze`, ... (e.g. `git archive` of the five top-level folders).
Exit status 1 when anything differs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BIG_BYTES = 20 << 20
VIEWS = ("kernels", "launches", "cuda_api", "ranges", "marks", "kernel_ranges", "range_stats", "stages", "gpus", "meta",
         "gpu_gaps", "gpu_metrics")


def default_traces() -> list[Path]:
    found = [REPO / "traces/examples/h100-gundam.sqlite.gz"]
    found += sorted((SHARED / "fixtures/nsys").glob("*.sqlite"))
    found += sorted((SHARED / "traces/nsys-sqlite").glob("*.sqlite"))
    found += sorted((SHARED / "traces/kineto").glob("*.json*"))
    return [p for p in found if p.exists()]


def command(code: str | None) -> list[str]:
    path = f"sys.path.insert(0, {code!r}); " if code else ""
    return [sys.executable, "-c", f"import sys; {path}from dsocr_perf.analyze.cli import main; sys.exit(main())"]


def outputs(trace: Path, code: str | None, views: bool) -> dict[str, str]:
    runs = {"json": [str(trace), "--json", "--ranges", "all", "--no-cache"]}
    big = trace.stat().st_size > BIG_BYTES
    for v in VIEWS if views else ():
        if big:   # a digest of every row and the first rows, not 10^6 rows of JSON
            runs[f"sql {v}"] = ["sql", str(trace), f"SELECT count(*) AS n, bit_xor(hash(t)) AS h FROM {v} t", "--json",
                                "--no-cache"]
            runs[f"sql {v} head"] = ["sql", str(trace), f"SELECT * FROM {v} LIMIT 5", "--json", "--no-cache"]
        else:
            runs[f"sql {v}"] = ["sql", str(trace), f"SELECT * FROM {v}", "--json", "--no-cache"]
    out = {}
    for name, args in runs.items():
        proc = subprocess.run([*command(code), *args], capture_output=True, text=True)
        out[name] = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return out


def first_difference(a, b, path="$") -> str:
    if type(a) is not type(b):
        return f"{path}: {a!r:.80} != {b!r:.80}"
    if isinstance(a, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'before' if k in a else 'now'}"
            if a[k] != b[k]:
                return first_difference(a[k], b[k], f"{path}.{k}")
        return f"{path}: key order differs"
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r:.80} != {b!r:.80}"


def explain(before: str, now: str) -> str:
    try:
        a = json.loads(before.split("\n", 1)[1].rsplit("\n", 2)[0])
        b = json.loads(now.split("\n", 1)[1].rsplit("\n", 2)[0])
        return first_difference(a, b)
    except (ValueError, IndexError):
        return f"{before[:200]!r} != {now[:200]!r}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", type=Path, metavar="DIR")
    mode.add_argument("--against", type=Path, metavar="DIR")
    ap.add_argument("--code", help="import dsocr_perf from this folder instead of the installed package")
    ap.add_argument("--trace", action="append", type=Path, default=[], help="another trace (repeatable)")
    ap.add_argument("--no-views", action="store_true", help="only the --json document, no sql views")
    args = ap.parse_args(argv)
    code = str(Path(args.code).resolve()) if args.code else None
    differ = 0
    for trace in default_traces() + args.trace:
        key = hashlib.sha256(str(trace.resolve()).encode()).hexdigest()[:12] + "-" + trace.name
        got = outputs(trace, code, views=not args.no_views)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{key}.json").write_text(json.dumps(got))
            print(f"saved {trace}", flush=True)
            continue
        saved = json.loads((args.against / f"{key}.json").read_text())
        saved = {name: saved[name] for name in got}
        bad = [name for name in got if saved.get(name) != got[name]]
        for name in bad:
            print(f"DIFFER {trace} [{name}]: {explain(saved[name], got.get(name, ''))}", flush=True)
        if not bad:
            print(f"same   {trace} ({len(saved)} outputs)", flush=True)
        differ += bool(bad)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
