"""What a capture option costs the session: decode ms per generated token from the manifests of captures that
differ in one option (GPU metrics on/off, operator ranges), each compared with the first.

    python benchmarks/capture_cost.py BASE.json OTHER.json [MORE.json ...] [--json OUT]

Each manifest (`dsocr-trace` writes NAME.json beside the trace) holds the host time of every measured request;
decode ms/token = the request's decode wall time / its generated tokens. The captures compared should share
page, mode, tokens and repeats; the median over a capture's requests is compared, the min shown beside it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def decode_ms_per_token(manifest: dict) -> list[float]:
    return [1000.0 * p["host_times_s"]["decode"] / p["workload"]["generated_tokens"]
            for p in manifest["pages"] if p["workload"]["generated_tokens"]]


def describe(manifest: dict) -> str:
    capture = manifest.get("capture", {})
    metrics = capture.get("gpu_metrics") or {}
    parts = [f"GPU metrics {metrics.get('frequency_hz')} Hz" if metrics.get("enabled") else "no GPU metrics"]
    if capture.get("torch_ops_nvtx"):
        parts.append(f"operator ranges ({capture['torch_ops_nvtx']})")
    return ", ".join(parts)


def compare(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        m = json.loads(path.read_text())
        per_token = decode_ms_per_token(m)
        rows.append({"capture": path.name, "what": describe(m), "requests": len(per_token),
                     "tokens": m["workload"]["generated_tokens"], "decode_ms_per_token": per_token,
                     "median": statistics.median(per_token), "min": min(per_token)})
    base = rows[0]["median"]
    for r in rows:
        r["vs_first"] = r["median"] / base - 1.0
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifests", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, help="also write the comparison as JSON")
    args = ap.parse_args(argv)
    try:
        rows = compare(args.manifests)
    except (OSError, ValueError, KeyError, TypeError, statistics.StatisticsError) as e:
        print(f"Error: cannot read the manifests ({type(e).__name__}: {e}); give dsocr-trace's NAME.json files",
              file=sys.stderr)
        return 2
    print("| capture | what | requests x tokens | decode ms/token, median | min | vs first |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['capture']} | {r['what']} | {r['requests']} x {r['tokens']} | {r['median']:.2f} | "
              f"{r['min']:.2f} | {r['vs_first'] * 100:+.1f} % |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
