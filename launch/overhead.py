"""Overhead of the stage ranges: the same page with ranges on and off, outside any profiler.

    python -m launch.overhead [IMAGE] [--runs 5] [--max-new-tokens 64] [--preset official|tiny] ...

One model, one warm-up page, then runs alternating on/off (on, off, on, off, ...) so that drift
(clocks, temperature) hits both sides alike; prints each side's median wall time and the ratio
on/off. `dsocr.stages.set_enabled(False)` turns the NVTX push/pop and record_function off entirely.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from launch.cli import DEFAULT_IMAGE
from launch.errors import LaunchError


def time_page(session, image: str, args) -> float:
    import torch

    start = time.perf_counter()
    session.run_page(image, mode=args.mode, max_new_tokens=args.max_new_tokens, ignore_eos=True,
                     max_tiles=args.max_tiles)
    if session.device.type == "cuda":
        torch.cuda.synchronize(session.device)
    return time.perf_counter() - start


def measure(session, image: str, args) -> dict:
    from dsocr import stages

    times = {"on": [], "off": []}
    time_page(session, image, args)   # warm-up (ranges on)
    try:
        for i in range(args.runs):
            for side in ("on", "off"):
                stages.set_enabled(side == "on")
                times[side].append(time_page(session, image, args))
                print(f"run {i + 1}/{args.runs} ranges {side:3s}: {times[side][-1] * 1000:9.1f} ms", flush=True)
    finally:
        stages.set_enabled(True)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    return {"runs": args.runs, "median_on_s": on, "median_off_s": off, "ratio": on / off,
            "times_on_s": times["on"], "times_off_s": times["off"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.overhead", description=__doc__.splitlines()[0])
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    ap.add_argument("--runs", type=int, default=5, help="runs per side (default 5)")
    ap.add_argument("--mode", default="gundam")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-tiles", type=int, default=9)
    ap.add_argument("--preset", default="official", choices=["official", "tiny"])
    ap.add_argument("--weights", metavar="DIR", help="checkpoint folder (default: random weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    try:
        import torch
        from dsocr.errors import DsocrError
        from dsocr.session import Session
        from launch.images import check_image

        page = check_image(Path(args.image))
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        t = time.perf_counter()
        session = Session.create(preset=args.preset, weights=args.weights, seed=args.seed, device=device)
        print(f"model load ({args.preset}, {device}): {time.perf_counter() - t:.1f} s", flush=True)
        result = measure(session, page.path, args)
    except (LaunchError, DsocrError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    result |= {"image": page.path, "mode": args.mode, "max_new_tokens": args.max_new_tokens,
               "preset": args.preset, "device": device,
               "gpu": torch.cuda.get_device_name() if device == "cuda" else None}
    print(f"ranges on : median {result['median_on_s'] * 1000:.1f} ms over {args.runs} runs")
    print(f"ranges off: median {result['median_off_s'] * 1000:.1f} ms over {args.runs} runs")
    print(f"ratio on/off: {result['ratio']:.4f} ({(result['ratio'] - 1) * 100:+.2f} %)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
