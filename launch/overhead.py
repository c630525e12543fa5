"""Overhead of the stage ranges: the same page with ranges on and off, outside any profiler.

    python -m dsocr_perf.launch.overhead [IMAGE] [--runs 5] [--max-new-tokens 64] [--preset official|tiny] ...

One model, one warm-up page, then pairs of runs in alternating order (on/off, off/on, ...) so that
drift (clocks, temperature) hits both sides alike; the garbage collector is run between pages and
held off during each, so that its pauses do not land on one side by chance. Prints each side's
median wall time and the ratio on/off. `dsocr.stages.set_enabled(False)` turns the NVTX push/pop
and record_function off entirely.

Page-to-page noise of a host-bound decode loop is a few per cent, larger than the effect, so the
tool also measures the cost of one range directly (enter + exit, on vs off, many times) and
multiplies it by the number of ranges a page opens: the direct estimate of the overhead.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

from dsocr_perf.launch.cli import DEFAULT_IMAGE
from dsocr_perf.launch.errors import LaunchError


def time_page(session, image: str, args) -> float:
    import torch

    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        session.run_page(image, mode=args.mode, max_new_tokens=args.max_new_tokens, ignore_eos=True,
                         max_tiles=args.max_tiles)
        if session.device.type == "cuda":
            torch.cuda.synchronize(session.device)
        return time.perf_counter() - start
    finally:
        gc.enable()


def ranges_per_page(session, image: str, args) -> int:
    """How many stage ranges one page opens (counted at the NVTX push)."""
    import nvtx

    push, count = nvtx.push_range, 0

    def counting_push(*a, **k):
        nonlocal count
        count += 1
        return push(*a, **k)

    nvtx.push_range = counting_push
    try:
        time_page(session, image, args)
    finally:
        nvtx.push_range = push
    return count


def range_cost_s(repeat: int = 20000) -> float:
    """Seconds one `stage()` enter + exit costs with ranges on, minus the same with ranges off."""
    from dsocr_perf.dsocr import stages

    cost = {}
    for side in (True, False):
        stages.set_enabled(side)
        start = time.perf_counter()
        for _ in range(repeat):
            with stages.stage(stages.DECODE_STEP, payload=1):
                pass
        cost[side] = (time.perf_counter() - start) / repeat
    stages.set_enabled(True)
    return cost[True] - cost[False]


def measure(session, image: str, args) -> dict:
    from dsocr_perf.dsocr import stages

    times = {"on": [], "off": []}
    time_page(session, image, args)   # warm-up (ranges on)
    try:
        for i in range(args.runs):
            for side in ("on", "off") if i % 2 == 0 else ("off", "on"):
                stages.set_enabled(side == "on")
                times[side].append(time_page(session, image, args))
                print(f"run {i + 1}/{args.runs} ranges {side:3s}: {times[side][-1] * 1000:9.1f} ms", flush=True)
    finally:
        stages.set_enabled(True)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    ranges, cost = ranges_per_page(session, image, args), range_cost_s()
    return {"runs": args.runs, "median_on_s": on, "median_off_s": off, "ratio": on / off,
            "times_on_s": times["on"], "times_off_s": times["off"],
            "ranges_per_page": ranges, "range_cost_s": cost, "direct_overhead": ranges * cost / off}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dsocr_perf.launch.overhead", description=__doc__.splitlines()[0])
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

        from dsocr_perf.dsocr.errors import DsocrError
        from dsocr_perf.dsocr.session import Session
        from dsocr_perf.launch.images import check_image

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
    print(f"direct: {result['ranges_per_page']} ranges per page x {result['range_cost_s'] * 1e6:.2f} us per range "
          f"= {result['direct_overhead'] * 100:.4f} % of the page")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
